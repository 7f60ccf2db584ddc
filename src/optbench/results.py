"""Results on disk: runs.csv (one row per run and evaluation), summary.csv (mean ± std over
seeds), config.yaml (resolved config + provenance). Every file is written atomically: to a
temporary file in the same folder, then renamed, so a reader never sees half a file."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

import optbench
from optbench import stats

RUNS_CSV = "runs.csv"
SUMMARY_CSV = "summary.csv"
CONFIG_YAML = "config.yaml"

METRICS = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy", "grad_evals", "wall_s"]
# A summary row is one optimizer at one evaluation step of one protocol.
GROUP_KEYS = ["experiment", "dataset", "model", "optimizer", "lr", "step"]
RUN_COLUMNS = GROUP_KEYS[:5] + ["seed", "step", "epoch"] + METRICS + ["diverged"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


PROTOCOL_KEYS = ["experiment", "dataset", "model"]


def by_protocol(runs: pd.DataFrame):
    """Yield (protocol, its runs, file-name suffix) for every protocol in runs. The suffix is
    empty when there is one protocol, else "_<experiment>_<dataset>_<model>"."""
    protocols = runs[PROTOCOL_KEYS].drop_duplicates()
    for protocol in protocols.itertuples(index=False):
        mask = (runs[PROTOCOL_KEYS] == list(protocol)).all(axis=1)
        suffix = "" if len(protocols) == 1 else "_" + "_".join(map(str, protocol))
        yield protocol, runs[mask], suffix


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose `optimizer` names one run setting each: an optimizer trained with several
    learning rates (lr_grid, or a multirun over optimizer.lr) becomes "adam lr=0.01", ..."""
    if "lr" not in runs or runs.empty:
        return runs
    several = runs.groupby("optimizer")["lr"].nunique(dropna=False) > 1
    names = set(several[several].index)
    if not names:
        return runs
    label = [
        f"{name} lr={lr:g}" if name in names else name
        for name, lr in zip(runs["optimizer"], runs["lr"], strict=True)
    ]
    return runs.assign(optimizer=label)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, optimizer, step), over the runs that have not diverged: for
    each metric <metric>_mean, <metric>_std (sample std, ddof=1), <metric>_ci_low and
    _ci_high (95% t-interval of the mean), _median, _q25, _q75 and _iqr (quartiles, NumPy's
    linear interpolation); empty where one seed cannot give them. n is the number of those
    seeds; n_diverged and diverged_fraction count the runs left out as diverged."""
    if "diverged" not in runs:
        runs = runs.assign(diverged=False)
    runs = with_labels(runs).assign(diverged=runs["diverged"].astype(bool))
    counts = runs.groupby(GROUP_KEYS, sort=False, dropna=False).agg(
        epoch=("epoch", "first"),
        seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
    )
    healthy = runs[~runs["diverged"]]

    def describe(group: pd.DataFrame) -> pd.Series:
        columns = {}
        for m in METRICS:
            values = group[m]
            columns[f"{m}_mean"] = values.mean()
            columns[f"{m}_std"] = values.std(ddof=1)
            columns.update({f"{m}_{k}": v for k, v in stats.describe(values).items()})
        return pd.Series(columns)

    described = healthy.groupby(GROUP_KEYS, sort=False, dropna=False)[METRICS].apply(describe)
    summary = counts.join(described).reset_index()
    summary.insert(summary.columns.get_loc("seeds"), "n", summary["seeds"] - summary["n_diverged"])
    summary["n_diverged"] = summary["n_diverged"].astype(int)
    summary["diverged_fraction"] = summary["n_diverged"] / summary["seeds"]
    summary = summary.drop(columns="seeds")
    order = {name: i for i, name in enumerate(runs["optimizer"].unique())}
    return summary.sort_values(
        ["experiment", "dataset", "model", "optimizer", "step"],
        key=lambda column: column.map(order) if column.name == "optimizer" else column,
        kind="stable",
    ).reset_index(drop=True)


def provenance() -> dict:
    """What produced the results: optbench's version and git revision, library versions."""
    import torch
    import torchvision

    from optbench.config import git_revision

    return {
        "optbench_version": optbench.__version__,
        "git_revision": git_revision(),
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_config(
    path: Path,
    cfg: DictConfig,
    optimizer_cfgs: list[DictConfig],
    overrides: list[str],
    provenance_info: dict | None = None,
) -> None:
    """config.yaml: the resolved config, every trained optimizer's hyperparameters, the
    command-line overrides, and provenance (taken now unless given)."""
    from optbench.config import fingerprint

    document = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    document["optimizer_configs"] = {
        o.name: OmegaConf.to_container(o, resolve=True) for o in optimizer_cfgs
    }
    document["provenance"] = {
        **(provenance_info or provenance()),
        "overrides": list(overrides),
        "protocol_fingerprint": fingerprint(cfg),
    }
    text = OmegaConf.to_yaml(OmegaConf.create(document))
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_results(out_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Write runs.csv and summary.csv; return the summary."""
    summary = summarize(runs)
    write_csv(runs[RUN_COLUMNS], out_dir / RUNS_CSV)
    write_csv(summary, out_dir / SUMMARY_CSV)
    return summary


def read_runs(results_dir: Path) -> pd.DataFrame:
    path = Path(results_dir) / RUNS_CSV
    if not path.is_file():
        raise FileNotFoundError(
            f"No {RUNS_CSV} in {results_dir}: is it an optbench results folder?"
        )
    runs = pd.read_csv(path)
    if "diverged" not in runs:  # written before optbench recorded divergence
        runs["diverged"] = runs["train_loss"].isna()
    if "grad_evals" not in runs:  # written before L-BFGS: one forward + backward per step
        runs["grad_evals"] = runs["step"]
    if "lr" not in runs:  # written before the learning rate had its own column
        lrs = {}
        config_path = Path(results_dir) / CONFIG_YAML
        if config_path.is_file():  # the job's config.yaml knows each optimizer's lr
            configs = OmegaConf.load(config_path).get("optimizer_configs", {})
            lrs = {name: float(c.get("lr", "nan")) for name, c in configs.items()}
        runs.insert(
            runs.columns.get_loc("optimizer") + 1, "lr", runs["optimizer"].map(lrs).astype(float)
        )
    return runs


# Overrides that do not change what a run is (which seeds, where, on what hardware).
NEUTRAL_OVERRIDES = ("seeds", "data_dir", "device", "threads", "hydra.", "optimizer")


def _is_neutral(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    # optimizer.lr needs no label either: runs.csv has an lr column (see with_labels)
    return key in NEUTRAL_OVERRIDES or key.startswith("hydra.") or key == "optimizer.lr"


def combine_jobs(sweep_dir: Path) -> pd.DataFrame | None:
    """Concatenate the runs.csv of every job folder of a Hydra multirun.

    When several jobs train the same optimizer on the same protocol but with other settings
    (`-m optimizer.lr=0.1,0.01`, `-m train.batch_size=full,1,100`), each job's own overrides
    join the optimizer label, "sgd [optimizer.lr=0.1]", so their rows stay apart. Jobs that
    differ only in seeds, paths or hardware keep the plain name and are pooled.
    """
    sweep_dir = Path(sweep_dir)
    job_dirs = sorted(
        (p.parent for p in sweep_dir.glob(f"*/{RUNS_CSV}")),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not job_dirs:
        return None
    jobs = []
    for job_dir in job_dirs:
        config_path = job_dir / CONFIG_YAML
        overrides = []
        if config_path.is_file():
            overrides = list(OmegaConf.load(config_path).provenance.overrides)
        jobs.append((read_runs(job_dir), overrides))
    shared = set.intersection(*(set(overrides) for _, overrides in jobs))
    protocol = ["experiment", "dataset", "model", "optimizer", "lr"]
    jobs_per_key: dict[tuple, int] = {}
    for runs, _ in jobs:
        for key in runs[protocol].drop_duplicates().itertuples(index=False):
            jobs_per_key[tuple(key)] = jobs_per_key.get(tuple(key), 0) + 1
    relabelled = []
    for runs, overrides in jobs:
        own = [o for o in overrides if o not in shared and not _is_neutral(o)]
        runs = runs.copy()
        repeated = runs[protocol].apply(lambda row: jobs_per_key[tuple(row)] > 1, axis=1)
        if own and repeated.any():
            runs.loc[repeated, "optimizer"] = runs.loc[repeated, "optimizer"] + (
                " [" + " ".join(own) + "]"
            )
        relabelled.append(runs)
    return pd.concat(relabelled, ignore_index=True)
