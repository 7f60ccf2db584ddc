"""A tuning job's files: every trial, the expected-best curve, its figure and table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from optbench.analysis.tuning import tuning_tables
from optbench.files import atomic_write, write_csv


def plot_tuning(curve: pd.DataFrame, title: str, path: Path) -> Path:
    from optbench.report.figures import plt, save, styles

    fig, ax = plt.subplots(figsize=(8, 5))
    look = styles(list(curve["optimizer"].unique()))
    for name, rows in curve.groupby("optimizer", sort=False):
        ax.plot(rows["trials"], rows["expected_best"], markersize=4, label=name, **look[name])
        color = look[name]["color"]
        ax.fill_between(rows["trials"], rows["q10"], rows["q90"], color=color, alpha=0.15)
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole trials, no 2.5
    ax.set_xlabel("tuning budget: random-search trials per optimizer")
    ax.set_ylabel("expected best final validation accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="optimizer", fontsize=8)
    return save(fig, path)


def write_tuning(out_dir: Path, runs: pd.DataFrame, drawn: pd.DataFrame) -> list[Path]:
    """tuning.csv (every trial), tuning_curve.csv and tuning.png (expected best accuracy
    against the number of trials), tuning.md (the curve at a few budgets)."""
    out_dir = Path(out_dir)
    trials, curve = tuning_tables(runs, drawn)
    write_csv(trials, out_dir / "tuning.csv")
    write_csv(curve, out_dir / "tuning_curve.csv")
    protocol = runs.iloc[0]
    title = (
        f"equal tuning budgets: {protocol.experiment} protocol, {protocol.dataset}, "
        f"{protocol.model} (band: 10-90% of the best over resamples)"
    )
    written = [
        out_dir / "tuning.csv",
        out_dir / "tuning_curve.csv",
        plot_tuning(curve, title, out_dir / "tuning.png"),
    ]
    n = int(curve["trials"].max())
    budgets = sorted({1, min(4, n), min(8, n), n})
    wide = (
        curve[curve["trials"].isin(budgets)]
        .pivot(index="optimizer", columns="trials", values="expected_best")
        .sort_values(n, ascending=False)
    )
    lines = [
        "# Expected best final validation accuracy at equal tuning budgets",
        "",
        "| optimizer | " + " | ".join(f"{k} trial{'s' if k > 1 else ''}" for k in budgets) + " |",
        "| --- |" + " ---: |" * len(budgets),
    ]
    for name, row in wide.iterrows():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in budgets) + " |")
    lines += [
        "",
        "## Each optimizer's best trial",
        "",
        "Chosen on the validation accuracy alone; its test accuracy is reported beside it.",
        "",
        "| optimizer | trial | validation accuracy | test accuracy |",
        "| --- | --- | ---: | ---: |",
    ]
    best = trials.loc[trials.groupby("optimizer", sort=False)["final_validation_accuracy"].idxmax()]
    for row in best.itertuples():
        lines.append(
            f"| {row.optimizer} | {row.name} | {row.final_validation_accuracy:.4f} "
            f"| {row.final_test_accuracy:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(out_dir / "tuning.md", lambda tmp: tmp.write_text(text))
    return written + [out_dir / "tuning.md"]
