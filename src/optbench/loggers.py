"""Results where users already look: a `logger` config group in the lightning-hydra-template
convention. `logger=tensorboard` writes TensorBoard event files beside the results, one run
per (optimizer setting, seed), with every metric of runs.csv at every evaluation step.

The logs are written from the runs the folder holds once training has ended, so they equal
runs.csv (as float32, TensorBoard's scalar type) and a resumed job's logs hold every step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from optbench.labels import label_settings

LOGGERS = ("none", "tensorboard")
LOGGED = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy", "current_lr"]
LOGGED += ["grad_evals", "wall_s"]


def write_logs(out_dir: Path, logger: dict, runs: pd.DataFrame) -> list[Path]:
    """Write the folder's runs to the configured logger; the folders written."""
    if logger["name"] == "none":
        return []
    return [_tensorboard(Path(out_dir) / logger["dir"], runs)]


def _tensorboard(root: Path, runs: pd.DataFrame) -> Path:
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    shutil.rmtree(root, ignore_errors=True)  # written afresh from the folder's runs
    for (label, seed), run in label_settings(runs).groupby(["optimizer", "seed"], sort=False):
        with SummaryWriter(log_dir=str(root / label.replace("/", "_") / f"seed_{seed}")) as log:
            for row in run.sort_values("step").itertuples():
                for metric in LOGGED:
                    value = getattr(row, metric)
                    if pd.notna(value):  # a diverged run's metrics are NaN: not logged
                        log.add_scalar(metric, float(value), global_step=int(row.step))
    return root
