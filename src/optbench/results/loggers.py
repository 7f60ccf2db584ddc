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

import errno
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd

from optbench.errors import ResourceError
from optbench.files import unwritable_because
from optbench.labels import label_settings

LOGGED = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy", "current_lr"]
LOGGED += ["grad_evals", "wall_s"]


# How long a tracking server may take to answer before training is refused: a server that
# is up answers its /health in milliseconds; MLflow's own client would retry for minutes.
PROBE_TIMEOUT_S = 5


def check_destination(logger: dict, out_dir: Path) -> None:
    """Raise ResourceError now, before any training, when the logger could not write its
    logs once training ends: a tracking server that does not answer, a store or TensorBoard
    folder that cannot be written. Stores that cannot be probed cheaply (databricks,
    postgresql://, ...) are left to MLflow."""

    name = logger["name"]
    if name == "tensorboard":
        folder = Path(out_dir) / logger["dir"]  # an absolute logger.dir stays as it is
        problem = unwritable_because(folder)
        if problem:
            raise ResourceError(
                errno.EACCES,
                f"logger=tensorboard cannot write its event files to {folder} ({problem}); "
                "nothing was trained. Choose a folder you can write with logger.dir=DIR "
                "(relative to the results folder), or train without it: logger=none.",
            )
    if name != "mlflow" or not logger["tracking_uri"]:
        return  # no logger, or MLflow's SQLite file in the results folder (checked with it)
    uri = str(logger["tracking_uri"])
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        problem = _unreachable_because(uri)
    elif scheme in ("", "file", "sqlite"):
        problem = unwritable_because(_store_folder(uri))
    else:
        return
    if problem and scheme in ("http", "https"):
        raise ResourceError(
            errno.EHOSTUNREACH,
            f"logger=mlflow cannot reach its tracking server logger.tracking_uri={uri} "
            f"({problem}); nothing was trained. Start the server (`mlflow server`, which "
            "needs `pip install mlflow`), correct logger.tracking_uri, or leave it out for a "
            "local store (mlflow.db in the results folder).",
        )
    if problem:
        raise ResourceError(
            errno.EACCES,
            f"logger=mlflow cannot write its store logger.tracking_uri={uri} ({problem}); "
            "nothing was trained. Give a store in a folder you can write, e.g. "
            "logger.tracking_uri=sqlite:///DIR/mlflow.db, or leave it out for a local store "
            "(mlflow.db in the results folder).",
        )


def _store_folder(uri: str) -> Path:
    """The folder a file or SQLite store writes into: sqlite:///PATH's folder, file:PATH
    or a plain path itself."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "sqlite":  # sqlite:////abs/file.db, sqlite:///relative.db
        return Path(urllib.parse.unquote(parts.path).removeprefix("/")).absolute().parent
    return Path(urllib.parse.unquote(parts.path) if parts.scheme == "file" else uri)


def _health_url(uri: str) -> str:
    return uri.rstrip("/") + "/health"  # every MLflow tracking server answers it


def _unreachable_because(uri: str) -> str | None:
    """Why a tracking server does not answer a GET of its /health within PROBE_TIMEOUT_S,
    in a few words; None when it answers (any HTTP status: it is there). Run in a thread
    so that a name lookup, which no socket timeout bounds, cannot hold the job either."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(_health_url(uri), timeout=PROBE_TIMEOUT_S):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)  # URLError wraps the socket's error
            said = getattr(reason, "strerror", None) or str(reason)  # not "[Errno 111] ..."
            outcome.append(" ".join(said.split()) or type(error).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1)
    if not outcome:
        return f"no answer within {PROBE_TIMEOUT_S} s"
    return outcome[0]


def write_logs(out_dir: Path, logger: dict, runs: pd.DataFrame) -> list[Path]:
    """Write the folder's runs to the configured logger; the folders written."""
    if logger["name"] == "none":
        return []
    if logger["name"] == "mlflow":
        return [_mlflow(Path(out_dir).resolve(), logger, runs)]
    return [_tensorboard(Path(out_dir) / logger["dir"], runs, Path(out_dir))]


def _tensorboard(root: Path, runs: pd.DataFrame, out_dir: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    if root.resolve().is_relative_to(out_dir.resolve()):
        shutil.rmtree(root, ignore_errors=True)  # written afresh from the folder's runs
    for (label, seed), run in label_settings(runs).groupby(["optimizer", "seed"], sort=False):
        run_dir = root / label.replace("/", "_") / f"seed_{seed}"
        # a folder outside the results (logger.dir=/shared/tb) may hold other logs: only
        # this run's own is replaced there
        shutil.rmtree(run_dir, ignore_errors=True)
        with SummaryWriter(log_dir=str(run_dir)) as log:
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
