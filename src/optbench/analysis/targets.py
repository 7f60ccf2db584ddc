"""Targets and time-to-target: how long each run takes to reach its workload's target.

A workload's target is an accuracy derived from reference runs, AlgoPerf's way: each
reference run's best accuracy over its evaluations, the median of those over seeds for
each reference optimizer, and the highest of these medians (`derive`). `optbench targets`
writes it into the workload's preset (`write_into_preset`) with how and when it was derived.

A run's time-to-target is the first evaluation at which its accuracy reaches the target, in
steps, epochs, gradient evaluations and training seconds; infinite when it never does (and
from the evaluation at which it diverged on, it cannot).

Which accuracy (`chosen_on`): the validation accuracy where the workload holds out a
validation set (dataset.validation_size), as AlgoPerf sets and measures its targets on
validation data, with the test accuracy reported beside it; only runs trained without one
fall back to the test accuracy, and the derivation and the report say so.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy import stats as scipy_stats

from optbench.analysis.stats import CONFIDENCE
from optbench.errors import ConfigError
from optbench.files import atomic_write

# What time is measured in: the name a user gives -> the runs.csv column.
MEASURES = {"steps": "step", "epochs": "epoch", "grad_evals": "grad_evals", "seconds": "wall_s"}
PROFILE_MEASURES = ("steps", "grad_evals", "seconds")  # what performance profiles may measure
RULE = (
    "the highest, among the reference optimizers, of the median over seeds of each run's "
    "best accuracy over its evaluations (rounded down to 4 decimals)"
)


def chosen_on(runs: pd.DataFrame) -> str:
    """The column targets are set and reached on: validation_accuracy where the runs were
    evaluated on a validation set, else test_accuracy."""
    has_validation = "validation_accuracy" in runs and runs["validation_accuracy"].notna().any()
    return "validation_accuracy" if has_validation else "test_accuracy"


MARKER = "# The target test accuracy of the suite's time-to-target"


def run_times(runs: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per run (optimizer, seed): whether its accuracy (chosen_on) reached the
    target, and when, in every measure (inf when it never did); its final and best test
    accuracy (NaN when diverged), and its final validation accuracy where it has one."""
    metric = chosen_on(runs)
    rows = []
    for (optimizer, seed), run in runs.groupby(["optimizer", "seed"], sort=False):
        run = run.sort_values("step")
        healthy = run[~run["diverged"].astype(bool)]
        hits = healthy[healthy[metric] >= target]
        first = hits.iloc[0] if len(hits) else None
        last = run.iloc[-1]
        row = {"optimizer": optimizer, "seed": int(seed), "reached": first is not None}
        for measure, column in MEASURES.items():
            row[measure] = float(first[column]) if first is not None else math.inf
        diverged = bool(last["diverged"])
        row["final_test_accuracy"] = math.nan if diverged else float(last["test_accuracy"])
        row["best_test_accuracy"] = float(healthy["test_accuracy"].max()) if len(healthy) else 0.0
        if metric == "validation_accuracy":
            final = math.nan if diverged else float(last["validation_accuracy"])
            row["final_validation_accuracy"] = final
        row["diverged"] = diverged
        rows.append(row)
    return pd.DataFrame(rows)


def median_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple:
    """The median and its distribution-free interval [x_(j), x_(n+1-j)] (order statistics,
    so infinite times are fine): the narrowest whose coverage, sum over i = j..n-j of
    C(n, i) / 2^n, is at least `confidence`, else the range (min, max), whose coverage is
    then below it (75% with 3 seeds). Returns (median, low, high, coverage)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    median = float(np.median(x))  # inf when half the values or more are
    best = 1
    for j in range(1, n // 2 + 1):
        coverage = scipy_stats.binom.cdf(n - j, n, 0.5) - scipy_stats.binom.cdf(j - 1, n, 0.5)
        if coverage >= confidence:
            best = j
    coverage = scipy_stats.binom.cdf(n - best, n, 0.5) - scipy_stats.binom.cdf(best - 1, n, 0.5)
    return median, float(x[best - 1]), float(x[n - best]), float(coverage)


def optimizer_times(times: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer: seeds, how many reached the target and the fraction, and for every
    measure the median time over seeds with its interval and that interval's coverage."""
    rows = []
    for optimizer, runs in times.groupby("optimizer", sort=False):
        row = {
            "optimizer": optimizer,
            "seeds": len(runs),
            "reached": int(runs["reached"].sum()),
            "fraction_reached": float(runs["reached"].mean()),
            "final_test_accuracy_median": float(runs["final_test_accuracy"].median()),
        }
        if "final_validation_accuracy" in runs:
            row["final_validation_accuracy_median"] = float(
                runs["final_validation_accuracy"].median()
            )
        for measure in MEASURES:
            median, low, high, coverage = median_interval(runs[measure].to_numpy())
            row |= {
                f"{measure}_median": median,
                f"{measure}_low": low,
                f"{measure}_high": high,
            }
        row["interval_coverage"] = coverage
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Deriving a target from reference runs


def derive(runs: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """The target of a workload from its reference runs (RULE, on the accuracy chosen_on
    picks), and each reference optimizer's median best accuracy. A diverged evaluation
    counts 0."""
    diverged = runs["diverged"].astype(bool)
    if diverged.all():
        raise ConfigError(
            "Every reference run diverged, so no target can be derived; choose other "
            "reference optimizers with optimizers=[...]."
        )
    # a diverged evaluation counts 0, so a run that diverged at once still counts, as 0
    metric = chosen_on(runs)
    accuracy = runs[metric].where(~diverged, 0.0)
    per_run = runs.assign(**{metric: accuracy}).groupby(["optimizer", "seed"], sort=False)
    best = per_run[metric].max()
    medians = best.groupby(level="optimizer", sort=False).median()
    value = math.floor(float(medians.max()) * 10_000 + 1e-6) / 10_000
    return value, {name: round(float(m), 6) for name, m in medians.items()}


def derivation(
    medians: dict[str, float],
    seeds: list[int],
    runs_dir: Path,
    revision: str,
    fingerprint: str,
    on: str = "validation_accuracy",
) -> dict:
    """The `derived` record written beside a target: the rule and the accuracy it is on
    (chosen_on), the reference values, the seeds, the date, optbench's version and
    revision, where the runs are and the protocol's fingerprint."""
    return {
        "rule": RULE,
        "on": on,
        "fingerprint": fingerprint,
        "reference": medians,
        "seeds": [int(s) for s in seeds],
        "date": datetime.date.today().isoformat(),
        "by": revision,
        "runs": str(runs_dir),
    }


def write_into_preset(preset: Path, value: float, derived: dict) -> None:
    """Replace the preset's target section (from MARKER to the end of the file) with the
    new target; a preset without one gets it appended, in place of a `target:` section of
    its own (a user's preset: `target: {test_accuracy: null}`). Comments above it stay."""
    text = preset.read_text()
    head = text[: text.index(MARKER)] if MARKER in text else _without_target(text) + "\n\n"
    block = OmegaConf.to_yaml(
        OmegaConf.create({"target": {"test_accuracy": value, "derived": derived}})
    )
    section = (
        f"{MARKER}: written by `optbench targets`\n"
        "# (docs/suite.md), with how and when it was derived. "
        "Derive it again rather than edit it.\n"
    )
    try:
        atomic_write(preset, lambda tmp: tmp.write_text(head + section + block))
    except OSError as error:
        raise ConfigError(
            f"Cannot write the target into {preset} ({error.strerror}); optbench writes targets "
            "into its own presets, so run `optbench targets` from a checkout you can write "
            "(an editable install: pip install -e .)."
        ) from None


def _without_target(text: str) -> str:
    """A preset's text without its top-level `target:` section (that line and the indented
    or blank lines under it), trailing blank lines dropped."""
    lines, kept, inside = text.splitlines(), [], False
    for line in lines:
        if re.match(r"target\s*:", line):
            inside = True
        elif inside and line.strip() and not line.startswith((" ", "\t")):
            inside = False
        if not inside:
            kept.append(line)
    return "\n".join(kept).rstrip("\n")
