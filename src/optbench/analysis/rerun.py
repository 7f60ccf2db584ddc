"""Does a rerun agree with the original? `optbench compare A B` and the end of `make sweep`.

Two folders of one protocol are compared run by run. The verdict is one of:

- bit-identical: every row equal in every column but wall_s (the same machine, the same
  threads and kernels give this);
- consistent: some numbers differ in their last digits (another CPU's vector instructions,
  another number of threads), and no optimizer's final test accuracy differs
  significantly: Welch's t-test per optimizer, Holm-corrected over the optimizers, every
  adjusted p >= ALPHA;
- inconsistent: at least one optimizer's final test accuracy differs significantly;
- cannot test: some numbers differ, no optimizer is flagged, but for at least one optimizer
  the test cannot be computed (fewer than two finite final accuracies in a folder, e.g. one
  seed, or every run diverged there), so nothing says its rerun agrees.

Runs that only one folder holds are named, and left out of the run-by-run comparison; the
test uses every run of each folder.

Welch's t-test, not a paired one: on another machine a seed's run starts from the same
weights and batches, but rounding differences grow over training until the two runs are
in effect independent draws from the seed distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from optbench import errors, labels
from optbench.analysis import stats
from optbench.analysis.stats import ALPHA
from optbench.config.schema import RUN_IDENTITY

IDENTITY = [*RUN_IDENTITY, "step"]
TEST = "Welch's t-test on the final test accuracy, Holm-corrected over the optimizers"


MIN_RUNS = 2  # finite final accuracies a folder needs per optimizer for Welch's test


@dataclass
class Verdict:
    verdict: str  # "bit-identical", "consistent", "inconsistent" or "cannot test"
    table: pd.DataFrame  # per optimizer: n, means, difference, p, p_holm, identical, flagged
    differing_runs: int  # runs (optimizer, lr, seed) with any differing value
    runs: int  # runs in both folders
    only_in_first: list[str] = field(default_factory=list)  # "adam seeds 5-9", ...
    only_in_second: list[str] = field(default_factory=list)

    @property
    def untestable(self) -> list[str]:
        """The optimizers whose test could not be computed (p is NaN)."""
        return self.table.loc[self.table["p"].isna(), "optimizer"].tolist()


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test; 1 for two equal constant samples, 0 for two
    different constant samples, NaN below two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def judge_reproduction(
    first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str]
) -> Verdict:
    """The verdict for two runs tables of one protocol (read from the folders `names`);
    ResultsError if they share no run."""
    first_dir, second_dir = names
    first, second = (labels.label_settings(f) for f in (first, second))
    order = list(dict.fromkeys(first["optimizer"]))  # the table follows the first folder
    first, second = (f.set_index(IDENTITY).sort_index() for f in (first, second))
    common = first.index.intersection(second.index)
    if common.empty:
        raise errors.ResultsError(
            f"{first_dir} and {second_dir} share no run (optimizer, hyperparameters, seed): "
            "nothing to compare."
        )
    columns = [c for c in first.columns if c != "wall_s" and c in second.columns]
    a, b = first.loc[common, columns], second.loc[common, columns]
    numeric = a.select_dtypes("number").columns
    same = (a[numeric] == b[numeric]) | (a[numeric].isna() & b[numeric].isna())
    other = [c for c in columns if c not in numeric]
    same = same.join((a[other] == b[other]) if other else pd.DataFrame(index=a.index))
    row_same = same.all(axis=1).groupby(level=["optimizer", "hyperparameters", "seed"]).all()
    table = _final_accuracies(first, second, row_same, order)
    if row_same.all():
        outcome = "bit-identical"  # on the runs both hold; the others are named
    elif table["flagged"].any():
        outcome = "inconsistent"
    else:
        outcome = "cannot test" if table["p"].isna().any() else "consistent"
    return Verdict(
        outcome,
        table,
        int((~row_same).sum()),
        len(row_same),
        _runs_only_in(first, second, order),
        _runs_only_in(second, first, order),
    )


def _runs_only_in(mine: pd.DataFrame, other: pd.DataFrame, order: list[str]) -> list[str]:
    """The runs of `mine` that `other` lacks, one item per optimizer setting (in `order`,
    then as they come): "adam seeds 5-9"."""
    runs = mine.index.droplevel("step").unique()
    lacking = runs.difference(other.index.droplevel("step").unique())
    names = lacking.get_level_values("optimizer")
    items = []
    for optimizer in sorted(set(names), key=lambda o: (order + [o]).index(o)):
        seeds = lacking[names == optimizer].get_level_values("seed")
        items.append(f"{optimizer} seed{'s' if len(seeds) > 1 else ''} {stats.seeds_text(seeds)}")
    return items


def _final_accuracies(
    first: pd.DataFrame, second: pd.DataFrame, row_same: pd.Series, order: list[str]
) -> pd.DataFrame:
    """Per optimizer setting (in `order`): both folders' final test accuracies, how many runs
    are identical, and Welch's test of the difference with Holm's correction (flagged)."""
    rows = []
    for optimizer, mine in row_same.groupby(level="optimizer"):
        finals = []
        for frame in (first, second):
            runs = frame.xs(optimizer, level="optimizer").reset_index()
            last = stats.last_step_rows(runs)
            healthy = last.loc[~last["diverged"].astype(bool), "test_accuracy"].to_numpy()
            finals.append(healthy[np.isfinite(healthy)])
        p = welch_p(*finals) if min(map(len, finals)) >= MIN_RUNS else math.nan
        rows.append(
            {
                "optimizer": optimizer,
                "n_first": len(finals[0]),
                "n_second": len(finals[1]),
                "mean_first": finals[0].mean() if len(finals[0]) else math.nan,
                "mean_second": finals[1].mean() if len(finals[1]) else math.nan,
                "identical_runs": int(mine.sum()),
                "runs": len(mine),
                "p": p,
            }
        )
    table = pd.DataFrame(rows)
    table = table.set_index("optimizer").loc[[o for o in order if o in set(table["optimizer"])]]
    table = table.reset_index()
    table["difference"] = table["mean_second"] - table["mean_first"]
    tested = table["p"].notna()
    table["p_holm"] = math.nan
    if tested.any():
        table.loc[tested, "p_holm"] = stats.holm(table.loc[tested, "p"].tolist())
    table["flagged"] = table["p_holm"] < ALPHA
    return table


def report(first_dir: Path, second_dir: Path, verdict: Verdict) -> str:
    """The verdict as a few lines and a table, for the terminal."""
    lines = [
        f"Rerun check: {first_dir} (first) against {second_dir} (second): does the second "
        "reproduce the first?"
    ]
    for folder, only in ((first_dir, verdict.only_in_first), (second_dir, verdict.only_in_second)):
        if only:
            lines.append(f"Only in {folder}, so not compared run by run: {'; '.join(only)}.")
    if verdict.verdict == "bit-identical":
        every = "all" if not (verdict.only_in_first or verdict.only_in_second) else "the"
        lines.append(
            f"BIT-IDENTICAL: {every} {verdict.runs} runs both folders hold are equal in every "
            "column but wall_s."
        )
        return "\n".join(lines) + "\n"
    lines.append(
        f"{verdict.differing_runs} of {verdict.runs} runs differ in some digits. Test: {TEST}."
    )
    lines.append("")
    lines.append(
        f"{'optimizer':<24} {'first':>16} {'second':>16} {'difference':>11} {'p':>8} "
        f"{'p (Holm)':>9}"
    )
    for r in verdict.table.itertuples():
        tested = f"{r.p:>8.3g} {r.p_holm:>9.3g}" if not math.isnan(r.p) else f"{'cannot test':>18}"
        lines.append(
            f"{r.optimizer:<24} {r.mean_first:>11.4f} (n={r.n_first}) "
            f"{r.mean_second:>11.4f} (n={r.n_second}) {r.difference:>+11.4f} "
            f"{tested}{'  FLAGGED' if r.flagged else ''}"
        )
    lines.append("")
    if verdict.verdict == "cannot test":
        lines.append(
            f"CANNOT TEST: {', '.join(verdict.untestable)} "
            f"{'has' if len(verdict.untestable) == 1 else 'have'} fewer than {MIN_RUNS} "
            "finite final test accuracies in a folder (n above: one seed, or runs that "
            "diverged), so nothing says the rerun agrees there; no optimizer that could be "
            "tested differs significantly. Rerun with more seeds to test them."
        )
    elif verdict.verdict == "consistent":
        lines.append(
            f"CONSISTENT: the numbers differ in their last digits, but no optimizer's final "
            f"test accuracy differs significantly (every Holm-adjusted p >= {ALPHA})."
        )
    else:
        flagged = ", ".join(verdict.table.loc[verdict.table["flagged"], "optimizer"])
        lines.append(
            f"INCONSISTENT: the final test accuracy of {flagged} differs significantly "
            f"(Holm-adjusted p < {ALPHA}). Check that both folders ran the same code "
            "(config.yaml, provenance) before trusting either."
        )
    return "\n".join(lines) + "\n"
