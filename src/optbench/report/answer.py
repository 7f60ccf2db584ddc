"""The answer on screen: the table of final test accuracies a training command ends with,
logged to the `optbench` logger (Hydra sends it to the terminal and to the job's
optbench.log), fitted to the terminal's width.

It is made from the summary (and the ranking) the command has just computed, so it says
what the files say without reading them back.
"""

from __future__ import annotations

import logging
import shutil
import textwrap

import pandas as pd

from optbench.analysis.stats import final_rows
from optbench.labels import TRIAL, interval, mean_std

log = logging.getLogger("optbench")

# The columns a narrow terminal gives up first, in this order; the optimizer, its accuracy
# and the best mark stay (a label too long is shortened with "…").
OPTIONAL = ("95% CI", "diverged", "n")
NUMERIC = ("accuracy", "95% CI", "n", "diverged")  # right-aligned


def final_table(summary: pd.DataFrame, ranking: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per optimizer setting at its last evaluation: optimizer, accuracy (mean ± std), its
    95% interval, n (seeds in the mean), diverged (seeds left out) and the ranking's mark:
    "best", or "≈ best" where the paired tests cannot tell it from the best. For a tuning
    folder, each optimizer's best trial, the highest marked "best" (no test: picking the
    best of several trials biases any)."""
    final = final_rows(summary)
    # the best first; every seed diverged last
    final = final.sort_values("test_accuracy_mean", ascending=False, kind="stable")
    marks = dict.fromkeys(final["optimizer"], "")
    trials = final["optimizer"].str.extract(TRIAL)["optimizer"]
    if len(final) and trials.notna().all():
        final = final[~trials[final.index].duplicated()]  # each optimizer's best trial
        if pd.notna(final["test_accuracy_mean"].iloc[0]):  # not where every trial diverged
            marks[final["optimizer"].iloc[0]] = "best"
    elif ranking is not None and len(ranking) > 1:
        for r in ranking.itertuples():
            tied = r.tied_with_best and r.n > 1  # one seed: no test to tie with
            marks[r.optimizer] = "best" if r.rank == 1 else ("≈ best" if tied else "")
    return pd.DataFrame(
        {
            "optimizer": final["optimizer"],
            "accuracy": list(
                map(mean_std, final["test_accuracy_mean"], final["test_accuracy_std"])
            ),
            "95% CI": list(
                map(interval, final["test_accuracy_ci_low"], final["test_accuracy_ci_high"])
            ),
            "n": final["n"].astype(int).astype(str),
            "diverged": final["n_diverged"].astype(int).astype(str),
            "": final["optimizer"].map(marks),
        }
    ).reset_index(drop=True)


def fitted(table: pd.DataFrame, width: int) -> list[str]:
    """The table as lines of at most width characters where it can be: the optional
    columns given up one by one, then the optimizer labels shortened."""
    optional = [column for column in OPTIONAL if column in table]
    lines = _lines(table)
    while optional and max(map(len, lines)) > width:
        table = table.drop(columns=optional.pop(0))
        lines = _lines(table)
    excess = max(map(len, lines)) - width
    longest = max(map(len, [*table["optimizer"], "optimizer"]))
    if excess > 0 and longest - excess >= len("optimizer"):
        keep = longest - excess
        table = table.assign(
            optimizer=[o if len(o) <= keep else o[: keep - 1] + "…" for o in table["optimizer"]]
        )
        lines = _lines(table)
    return lines


def _lines(table: pd.DataFrame) -> list[str]:
    """Columns two spaces apart, numbers right-aligned, no trailing blanks."""
    rows = [list(table.columns), *table.astype(str).itertuples(index=False)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(table.columns))]
    lines = []
    for row in rows:
        cells = [
            str(cell).rjust(w) if column in NUMERIC else str(cell).ljust(w)
            for cell, w, column in zip(row, widths, table.columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def log_final_table(summary: pd.DataFrame, ranking: pd.DataFrame | None = None) -> None:
    """Log the final table, fitted to the terminal (80 columns where there is none)."""
    table = final_table(summary, ranking)
    if table.empty:
        return
    width = shutil.get_terminal_size().columns
    legend = (
        "accuracy: mean ± std over the n seeds that did not diverge; 95% CI: the interval "
        "of the mean"
    )
    if (table[""] == "≈ best").any():
        legend += "; ≈ best: the paired tests by seed cannot tell it from the best"
    if table["optimizer"].str.fullmatch(TRIAL).all():
        legend += "; each optimizer's best trial"
    text = "\n".join([*fitted(table, width), *textwrap.wrap(legend + ".", width)])
    steps = sorted(set(final_rows(summary)["step"]))
    at = f"step {steps[0]}" if len(steps) == 1 else "each optimizer's last evaluation"
    log.info("Final test accuracy at %s:\n%s", at, text)
