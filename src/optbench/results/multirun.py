"""The end of a Hydra multirun: the runs.csv of every job folder combined into one, each
job's runs labelled apart where the jobs differ in their protocol, and no run counted
twice (cli.CombineMultirun writes the combined files)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from optbench.config.schema import RUN_IDENTITY, changes_protocol
from optbench.errors import ResultsError
from optbench.results.provenance import CONFIG_YAML
from optbench.results.store import RUNS_CSV, read_runs


def combine_jobs(sweep_dir: Path) -> pd.DataFrame | None:
    """Concatenate the runs.csv of every job folder of a Hydra multirun.

    Jobs that train one optimizer with other hyperparameters (`-m optimizer.lr=0.1,0.01`)
    are told apart by their runs' hyperparameters column (labels.label_settings: "sgd lr=0.1"). Jobs
    that train it on other protocols (`-m train.batch_size=full,1,100`) get their own
    overrides in the optimizer label, "sgd [train.batch_size=full]", so their rows stay
    apart. Jobs that differ only in seeds, paths or hardware keep the plain name and are
    pooled.
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
    protocol = ["experiment", "dataset", "model", "optimizer", "hyperparameters"]
    jobs_per_key: dict[tuple, int] = {}
    for runs, _ in jobs:
        for key in runs[protocol].drop_duplicates().itertuples(index=False):
            jobs_per_key[tuple(key)] = jobs_per_key.get(tuple(key), 0) + 1
    relabelled = []
    for runs, overrides in jobs:
        own = [o for o in overrides if o not in shared and changes_protocol(o)]
        runs = runs.copy()
        repeated = runs[protocol].apply(lambda row: jobs_per_key[tuple(row)] > 1, axis=1)
        if own and repeated.any():
            runs.loc[repeated, "optimizer"] = runs.loc[repeated, "optimizer"] + (
                " [" + " ".join(own) + "]"
            )
        relabelled.append(runs)
    _check_each_run_in_one_job(relabelled, job_dirs)
    return pd.concat(relabelled, ignore_index=True)


def _check_each_run_in_one_job(jobs: list[pd.DataFrame], job_dirs: list[Path]) -> None:
    """A run that two job folders hold would count twice in the combined results."""
    seen: dict[tuple, Path] = {}
    for runs, job_dir in zip(jobs, job_dirs, strict=True):
        for key in runs[RUN_IDENTITY].drop_duplicates().itertuples(index=False):
            if tuple(key) in seen:
                optimizer, seed = key[RUN_IDENTITY.index("optimizer")], key[-1]
                raise ResultsError(
                    f"run {optimizer} seed {seed} is in two job folders, {seen[tuple(key)]} "
                    f"and {job_dir}, and would count twice. Move one of them out of the "
                    "sweep folder, or write the multirun elsewhere with hydra.sweep.dir=DIR."
                )
            seen[tuple(key)] = job_dir
