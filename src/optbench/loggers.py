"""Results where users already look: a `logger` config group in the lightning-hydra-template
convention. `logger=tensorboard` writes TensorBoard event files beside the results, one run
per (optimizer setting, seed), with every metric of runs.csv at every evaluation step.
`logger=mlflow` writes the same into an MLflow store (a SQLite file in the results folder
unless a tracking URI is given): a parent run per results folder with the plots and the
report as artifacts, a nested run per (optimizer setting, seed) with its parameters.

The logs are written from the runs the folder holds once training has ended, so they equal
runs.csv (TensorBoard stores float32) and a resumed job's logs hold every step; the same
command again replaces the folder's logs instead of adding a second copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from optbench.labels import label_settings

LOGGERS = ("none", "tensorboard", "mlflow")
LOGGED = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy", "current_lr"]
LOGGED += ["grad_evals", "wall_s"]


def write_logs(out_dir: Path, logger: dict, runs: pd.DataFrame) -> list[Path]:
    """Write the folder's runs to the configured logger; the folders written."""
    if logger["name"] == "none":
        return []
    if logger["name"] == "mlflow":
        return [_mlflow(Path(out_dir).resolve(), logger, runs)]
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


def _mlflow(out_dir: Path, logger: dict, runs: pd.DataFrame) -> Path:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = logger["tracking_uri"] or f"sqlite:///{out_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    name = logger["experiment_name"] or str(runs["experiment"].iloc[0])
    found = client.get_experiment_by_name(name)
    local = not logger["tracking_uri"]  # the artifacts beside the store, not in ./mlruns
    artifacts = (out_dir / "mlflow-artifacts").as_uri() if local else None
    experiment = found.experiment_id if found else client.create_experiment(name, artifacts)
    folder = f"tags.optbench_folder = '{out_dir}'"
    for old in client.search_runs([experiment], filter_string=folder):  # the same command again
        client.delete_run(old.info.run_id)
    parent = client.create_run(
        experiment, run_name=out_dir.name, tags={"optbench_folder": str(out_dir)}
    )
    for path in sorted(out_dir.glob("*.png")) + sorted(out_dir.glob("report.*")):
        client.log_artifact(parent.info.run_id, str(path))
    for (label, seed), run in label_settings(runs).groupby(["optimizer", "seed"], sort=False):
        first = run.iloc[0]
        tags = {"optbench_folder": str(out_dir), "mlflow.parentRunId": parent.info.run_id}
        child = client.create_run(experiment, run_name=f"{label} seed {seed}", tags=tags)
        params = {"optimizer": label, "seed": seed, "lr": first["lr"]}
        params |= {
            key: first[key] for key in ("hyperparameters", "dataset", "model", "fingerprint")
        }
        metrics = [
            Metric(metric, float(row[metric]), 0, int(row["step"]))
            for _, row in run.sort_values("step").iterrows()
            for metric in LOGGED
            if pd.notna(row[metric])
        ]
        client.log_batch(
            child.info.run_id,
            params=[Param(key, str(value)) for key, value in params.items()],
            tags=[RunTag("optbench_run", f"{label} seed {seed}")],
        )
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics a batch
            client.log_batch(child.info.run_id, metrics=metrics[start : start + 1000])
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return out_dir / "mlflow.db" if local else out_dir
