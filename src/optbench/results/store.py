"""Results on disk: runs.csv (one row per run and evaluation) and summary.csv (mean ± std
over seeds); reading them back, checked; what a results folder already holds when a job
resumes; the ranking's files (config.yaml is provenance.py's). Every file is written through
files.atomic_write."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from optbench.analysis import stats
from optbench.config.schema import (
    RUN_IDENTITY,
    run_key,
)
from optbench.errors import ResultsError
from optbench.files import write_csv
from optbench.labels import label_settings
from optbench.plan import Plan
from optbench.results.provenance import differences

RUNS_CSV = "runs.csv"
SUMMARY_CSV = "summary.csv"
CHECKPOINT = "checkpoint.pt"  # the training state of an unfinished job (training.loop.train)

# The columns of runs.csv that summary.csv summarizes over seeds
SUMMARIZED = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy", "grad_evals", "wall_s"]
# A summary row is one optimizer at one evaluation step of one protocol.
GROUP_KEYS = ["experiment", "dataset", "model", "optimizer", "lr", "hyperparameters", "step"]
RUN_COLUMNS = GROUP_KEYS[:6] + ["seed", "step", "epoch", "current_lr"] + SUMMARIZED
RUN_COLUMNS += ["diverged", "fingerprint"]
# Where the dataset holds out a validation set (dataset.validation_size), its metrics follow
# the test accuracy; without one, runs.csv has neither column, as before validation sets.
VALIDATION_METRICS = ["validation_loss", "validation_accuracy"]


def metrics_of(runs: pd.DataFrame) -> list[str]:
    """SUMMARIZED, with the validation metrics after the test accuracy where runs has them."""
    validation = [m for m in VALIDATION_METRICS if m in runs]
    at = SUMMARIZED.index("test_accuracy") + 1
    return SUMMARIZED[:at] + validation + SUMMARIZED[at:]


def run_columns(runs: pd.DataFrame) -> list[str]:
    """The columns of runs.csv for these runs: RUN_COLUMNS, and the validation metrics where
    the runs were evaluated on a validation set."""
    at = RUN_COLUMNS.index("test_accuracy") + 1
    return RUN_COLUMNS[:at] + [m for m in VALIDATION_METRICS if m in runs] + RUN_COLUMNS[at:]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, optimizer, step), over the runs that have not diverged: for
    each metric <metric>_mean, <metric>_std (sample std, ddof=1), <metric>_ci_low and
    _ci_high (95% t-interval of the mean, clipped to the metric's range: stats.RANGES),
    _median, _q25, _q75 and _iqr (quartiles, NumPy's linear interpolation); empty where
    one seed cannot give them. n is the number of those seeds; n_diverged and
    diverged_fraction count the runs left out as diverged."""
    if "diverged" not in runs:
        runs = runs.assign(diverged=False)
    runs = label_settings(runs).assign(diverged=runs["diverged"].astype(bool))
    counts = runs.groupby(GROUP_KEYS, sort=False, dropna=False).agg(
        epoch=("epoch", "first"),
        seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
    )
    healthy = runs[~runs["diverged"]]
    metrics = metrics_of(runs)

    def describe(group: pd.DataFrame) -> pd.Series:
        columns = {}
        for m in metrics:
            values = group[m]
            columns[f"{m}_mean"] = values.mean()
            columns[f"{m}_std"] = values.std(ddof=1)
            described = stats.describe(values, bounds=stats.metric_range(m))
            columns.update({f"{m}_{k}": v for k, v in described.items()})
        return pd.Series(columns)

    described = healthy.groupby(GROUP_KEYS, sort=False, dropna=False)[metrics].apply(describe)
    # every column even where every run diverged (NaN there)
    columns = [f"{m}_{k}" for m in metrics for k in ("mean", "std", *stats.DESCRIBED)]
    described = described.reindex(columns=columns)
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


def write_results(out_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Write runs.csv and summary.csv; return the summary."""
    _check_rows(out_dir / RUNS_CSV, runs.reset_index(drop=True))  # never write what read refuses
    write_csv(runs[run_columns(runs)], out_dir / RUNS_CSV)
    return write_summary(out_dir, runs)


def as_written(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as write_results writes them into runs.csv (its columns, in its order, rows
    numbered from 0): what read_runs would read back from that file."""
    return runs[RUN_COLUMNS].reset_index(drop=True)


def write_summary(out_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Write summary.csv from the runs; return it."""
    summary = summarize(runs)
    write_csv(summary, Path(out_dir) / SUMMARY_CSV)
    return summary


def read_runs(results_dir: Path) -> pd.DataFrame:
    """runs.csv of a results folder, checked: a damaged file raises ResultsError and is
    left as it is."""
    path = Path(results_dir) / RUNS_CSV
    if not path.is_file():
        raise FileNotFoundError(
            f"No {RUNS_CSV} in {results_dir}: is it an optbench results folder?"
        )
    try:
        runs = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsError(_damaged(path, " ".join(str(error).split()))) from None
    if not _ends_with_line_end(path):  # cut short: its last row may still parse, wrongly
        raise ResultsError(_damaged(path, "its last row is incomplete"))
    missing = [c for c in RUN_COLUMNS if c not in runs]
    if missing:
        raise ResultsError(
            _damaged(
                path, f"no column {', '.join(missing)}; an earlier optbench may have written it"
            )
        )
    identity = runs[["seed", "step"]]
    if identity.isna().any().any() or not all(map(pd.api.types.is_integer_dtype, identity.dtypes)):
        raise ResultsError(_damaged(path, "rows with a missing or non-integer seed or step"))
    _check_rows(path, runs)
    return runs


def _check_rows(path: Path, runs: pd.DataFrame) -> None:
    """No row twice, every metric in a row not diverged, and every run with every
    evaluation of its protocol: runs.csv holds complete runs only, so anything else is
    damage (a file cut or edited by hand)."""
    line = runs.index + 2  # the header is line 1
    keys = RUN_IDENTITY + ["step"]
    repeated = runs.duplicated(keys, keep="first")
    if repeated.any():
        row = runs[repeated].iloc[0]
        first = line[(runs[keys] == row[keys]).all(axis=1)][0]
        raise ResultsError(
            _damaged(
                path,
                f"line {line[repeated][0]} repeats line {first} (optimizer {row['optimizer']}, "
                f"seed {row['seed']}, step {row['step']})",
            )
        )
    _check_measured(path, runs)
    for _, protocol_runs in runs.groupby("fingerprint", sort=False):
        every_step = set(protocol_runs["step"])
        for _, run in protocol_runs.groupby(RUN_IDENTITY, sort=False):
            lacking = sorted(every_step - set(run["step"]))
            if lacking:
                raise ResultsError(_damaged(path, _lacking(run, lacking)))


def _check_measured(path: Path, runs: pd.DataFrame) -> None:
    """A run that has not diverged has every metric at every evaluation (trainers marks it
    diverged at the first that lacks one): a missing value in such a row is damage, which
    would otherwise print as "0.7120 ± nan"."""
    measured = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy"]
    healthy = runs["diverged"].astype(str).str.lower() != "true"
    missing = runs[measured].isna() & healthy.to_numpy()[:, None]
    for metric in (m for m in VALIDATION_METRICS if m in runs):
        # protocols with a validation set (folders combined with --allow-mixed may hold
        # protocols without one, whose rows have no validation metrics at all)
        validated = runs.groupby("fingerprint")[metric].transform(lambda v: v.notna().any())
        missing[metric] = runs[metric].isna() & healthy & validated
    if missing.any().any():
        position = int(missing.any(axis=1).to_numpy().argmax())
        row, empty = runs.iloc[position], ", ".join(missing.columns[missing.iloc[position]])
        where = f"optimizer {row['optimizer']}, seed {row['seed']}, step {row['step']}"
        reason = f"line {position + 2} ({where}) has no {empty} but is not marked diverged"
        raise ResultsError(_damaged(path, reason))  # line 1 is the header


def _lacking(run: pd.DataFrame, steps: list[int]) -> str:
    lines = run.index + 2  # the header is line 1
    where = f"line {lines.min()}" if len(lines) == 1 else f"lines {lines.min()}-{lines.max()}"
    return (
        f"the run on {where} (optimizer {run['optimizer'].iloc[0]}, "
        f"seed {run['seed'].iloc[0]}) lacks its evaluations at step {', '.join(map(str, steps))}"
    )


def _ends_with_line_end(path: Path) -> bool:
    """Every file optbench writes ends with a line end; one cut short most likely does not."""
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _damaged(path: Path, reason: str) -> str:
    return (
        f"{path} cannot be read as optbench results ({reason}). It is left untouched: repair "
        "or move it away, or start afresh with resume=false (which moves the folder's "
        "results aside into replaced-<time>/)."
    )


# ---------------------------------------------------------------------------------------
# Resuming: what a results folder already holds


def previous_runs(out_dir: Path, plan: Plan, eval_steps: list[int]) -> pd.DataFrame | None:
    """The complete runs already in out_dir (None if it holds none), after checking that
    they come from the plan's protocol, whose evaluations are at eval_steps: results of
    another protocol are never mixed in, and a run without all its evaluations is damage."""
    if not (Path(out_dir) / RUNS_CSV).is_file():
        return None
    runs = read_runs(out_dir)
    for _, run in runs.groupby(RUN_IDENTITY, sort=False):
        lacking = sorted(set(eval_steps) - set(run["step"]))
        if lacking:
            raise ResultsError(_damaged(Path(out_dir) / RUNS_CSV, _lacking(run, lacking)))
    theirs = sorted(set(runs["fingerprint"]))
    if theirs != [plan.fingerprint]:
        raise ResultsError(
            f"{out_dir} holds results of another protocol (fingerprint {', '.join(theirs)}; "
            f"this job's is {plan.fingerprint}); keys that differ: {differences(out_dir, plan)}. "
            "optbench does not mix them: write elsewhere (hydra.run.dir=...), or use "
            "resume=false to move the old results aside into replaced-<time>/."
        )
    return runs


def read_many(results_dirs: list[Path], allow_mixed: bool = False) -> pd.DataFrame:
    """The runs of several results folders in one frame. Folders of different protocols
    (sets of fingerprints) are refused unless allow_mixed, and so is a run that two
    folders both hold (it would count twice)."""
    frames = [read_runs(d) for d in results_dirs]
    kinds = [frozenset(f["fingerprint"]) for f in frames]
    if not allow_mixed and len(set(kinds)) > 1:
        other = next(i for i, kind in enumerate(kinds) if kind != kinds[0])
        first, second = Path(results_dirs[0]), Path(results_dirs[other])
        raise ResultsError(
            f"{first} and {second} hold results of different protocols "
            f"(fingerprints {', '.join(sorted(kinds[0]))} and {', '.join(sorted(kinds[other]))}); "
            f"keys that differ: {differences(first, second)}. Pass --allow-mixed to put them "
            "side by side anyway."
        )
    runs = pd.concat(frames, ignore_index=True)
    identity = RUN_IDENTITY + ["step"]
    repeated = runs[runs.duplicated(identity, keep=False)]
    if not repeated.empty:
        row = repeated.iloc[0]
        holders = [
            str(d)
            for d, f in zip(results_dirs, frames, strict=True)
            if ((f[identity] == row[identity].to_list()).all(axis=1)).any()
        ]
        raise ResultsError(
            f"Run {row['optimizer']} seed {row['seed']} (the same hyperparameters) appears in "
            f"more than one folder ({', '.join(holders)}); it would count twice. Leave one of "
            "them out."
        )
    return runs


def merge_runs(previous: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Previous complete runs and the new ones, ordered by step, then optimizer (in order of
    first appearance), then seed."""
    runs = pd.concat([f for f in (previous, new) if f is not None and not f.empty])
    runs = runs.reset_index(drop=True)
    labels = runs["optimizer"] + " " + runs["hyperparameters"]
    rank = labels.map({label: i for i, label in enumerate(labels.unique())})
    order = pd.DataFrame({"step": runs["step"], "rank": rank, "seed": runs["seed"]})
    return runs.loc[order.sort_values(["step", "rank", "seed"], kind="stable").index]


def complete_runs(runs: pd.DataFrame | None, total_steps: int) -> frozenset:
    """The run_keys of the runs that reached total_steps."""
    if runs is None:
        return frozenset()
    final = runs[runs["step"] == total_steps]
    return frozenset(map(run_key, final["optimizer"], final["hyperparameters"], final["seed"]))
