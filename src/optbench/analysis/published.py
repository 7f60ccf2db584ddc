"""The tutorials' published one-seed numbers, and where they sit in our distribution.

The files in analysis/published/ are copied verbatim from the tutorials' tables (one seed
each). `published(experiment)` turns them into long rows (optimizer, x, metric, value);
`beside_ours(runs, experiment)` sets each beside our mean ± std over seeds at the same point.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd

from optbench.files import atomic_write, write_csv
from optbench.labels import mean_std

SOURCES = {
    "wizard_ffnn": (
        "wizard_ffnn.csv: the feed-forward-net tutorial's one-seed tables (optbench's "
        "docs/protocols.md): the last mini-batch's loss and "
        "the test accuracy every 500 iterations (printed as truncated integer percents, except "
        "adadelta's with two decimals), and the summary list of final accuracies (two decimals)."
    ),
    "examples_cnn": (
        "examples_cnn.csv: the 2019 PyTorch MNIST example run once with each optimizer "
        "(optbench's docs/protocols.md): test loss and "
        "test accuracy after every epoch (four decimals)."
    ),
}

# The dataset and model each tutorial trained: only such runs are compared with it.
DATASET_AND_MODEL = {"wizard_ffnn": ("mnist", "ffnn"), "examples_cnn": ("mnist", "lenet")}

COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
FLAG_Z = 3.0  # a published value more than 3 std from our mean is flagged


def published(experiment: str) -> pd.DataFrame | None:
    """Long rows: optimizer, x ("step" or "epoch"), at, metric, value, printed_as."""
    if experiment not in SOURCES:
        return None
    table = pd.read_csv(files("optbench.analysis").joinpath(f"published/{experiment}.csv").open())
    rows = []
    if experiment == "wizard_ffnn":
        for r in table.itertuples():
            rows.append(
                (
                    r.optimizer,
                    "step",
                    r.iteration,
                    "last_batch_loss",
                    r.train_batch_loss,
                    "6 decimals",
                )
            )
            whole = float(r.test_accuracy_printed).is_integer()
            rows.append(
                (
                    r.optimizer,
                    "step",
                    r.iteration,
                    "test_accuracy",
                    r.test_accuracy_printed / 100,
                    "truncated integer %" if whole else "2 decimals %",
                )
            )
            if not np.isnan(r.test_accuracy_summary):
                rows.append(
                    (
                        r.optimizer,
                        "step",
                        r.iteration,
                        "final_test_accuracy",
                        r.test_accuracy_summary / 100,
                        "summary list, 2 decimals %",
                    )
                )
    else:
        for r in table.itertuples():
            rows.append((r.optimizer, "epoch", r.epoch, "test_loss", r.test_loss, "4 decimals"))
            rows.append(
                (r.optimizer, "epoch", r.epoch, "test_accuracy", r.test_accuracy, "4 decimals")
            )
    return pd.DataFrame(rows, columns=["optimizer", "x", "at", "metric", "published", "printed_as"])


def beside_ours(runs: pd.DataFrame, experiment: str) -> pd.DataFrame | None:
    """Per published cell: our mean, std (ddof=1), n, min, max at the same optimizer and
    point, z = (published - mean) / std, and `flagged` when |z| > 3."""
    table = published(experiment)
    if table is None:
        return None
    dataset, model = DATASET_AND_MODEL[experiment]
    runs = runs[
        (runs["experiment"] == experiment) & (runs["dataset"] == dataset) & (runs["model"] == model)
    ]
    rows = []
    for cell in table.itertuples():
        ours = runs[(runs["optimizer"] == cell.optimizer) & np.isclose(runs[cell.x], cell.at)]
        metric = "test_accuracy" if cell.metric == "final_test_accuracy" else cell.metric
        values = ours[metric].to_numpy()
        if len(values) == 0:
            continue
        mean = values.mean()
        std = values.std(ddof=1) if len(values) > 1 else np.nan
        z = (cell.published - mean) / std if std > 0 else np.nan
        rows.append(
            {
                "optimizer": cell.optimizer,
                "step": int(ours["step"].iloc[0]),
                "epoch": float(ours["epoch"].iloc[0]),
                "metric": cell.metric,
                "published": cell.published,
                "printed_as": cell.printed_as,
                "mean": mean,
                "std": std,
                "n": len(values),
                "min": values.min(),
                "max": values.max(),
                "z": z,
                "flagged": bool(np.isfinite(z) and abs(z) > FLAG_Z),
                # our mean printed as the tutorial printed it (truncated integer percents)
                "mean_as_printed": (
                    np.floor(mean * 100) / 100
                    if cell.printed_as.startswith("truncated")
                    else np.nan
                ),
            }
        )
    if not rows:
        return None
    comparison = pd.DataFrame(rows)
    if comparison["mean_as_printed"].isna().all():  # no value was printed truncated
        comparison = comparison.drop(columns="mean_as_printed")
    return comparison


def comparison_markdown(comparison: pd.DataFrame, experiment: str) -> str:
    """The comparison as Markdown tables, one per metric; flagged cells marked ⚠."""
    lines = [
        f"# {experiment}: published one-seed numbers beside ours",
        "",
        f"Source: {SOURCES[experiment]}",
        "",
        f"Ours: mean ± sample std over n seeds, min–max; z = (published − mean) / std; "
        f"⚠ marks |z| > {FLAG_Z:g}.",
    ]
    titles = {
        "final_test_accuracy": "Final test accuracy (the tutorial's summary list)",
        "test_accuracy": "Test accuracy",
        "test_loss": "Test loss (mean cross-entropy on the test set)",
        "last_batch_loss": "Loss of the last training mini-batch before the evaluation",
    }
    # (heading, alignment) of each column; our mean as printed only where values were
    # truncated (wizard_ffnn's accuracies)
    columns = [("optimizer", "---"), ("step", "---:"), ("epoch", "---:")]
    columns += [("published", "---:"), ("printed as", "---"), ("ours: mean ± std (n)", "---:")]
    columns += [("min–max", "---:"), ("z", "---:"), ("", "---")]
    truncates = "mean_as_printed" in comparison
    if truncates:
        columns.append(("our mean as printed", "---:"))
    for metric, title in titles.items():
        part = comparison[comparison["metric"] == metric]
        if part.empty:
            continue
        flagged = int(part["flagged"].sum())
        lines += [
            "",
            f"## {title}",
            "",
            f"{len(part) - flagged} of {len(part)} published values lie within our "
            f"mean ± {FLAG_Z:g} std.",
            "",
            _row([heading for heading, _ in columns]),
            _row([alignment for _, alignment in columns]),
        ]
        for r in part.itertuples():
            cells = [r.optimizer, r.step, f"{r.epoch:g}", f"{r.published:.4f}", r.printed_as]
            cells += [f"{mean_std(r.mean, r.std)} (n={r.n})", f"{r.min:.4f}–{r.max:.4f}"]
            cells += ["—" if np.isnan(r.z) else f"{r.z:+.1f}", "⚠" if r.flagged else ""]
            if truncates:
                cells.append("" if np.isnan(r.mean_as_printed) else f"{r.mean_as_printed:.4f}")
            lines.append(_row(cells))
        truncated = part[part["printed_as"].str.startswith("truncated")]
        if not truncated.empty:
            agree = int(np.isclose(truncated["mean_as_printed"], truncated["published"]).sum())
            lines += [
                "",
                "The tutorial printed these accuracies as truncated integer percents (old "
                "integer division): a printed 0.9600 stands for a value in [0.9600, 0.9700), "
                "so these published values sit up to 0.01 below what was measured and their z "
                "is biased downward. Our mean truncated the same way (last column) equals the "
                f"printed value in {agree} of {len(truncated)} cells.",
            ]
    return "\n".join(lines) + "\n"


def _row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def comparisons(runs: pd.DataFrame) -> dict[str, pd.DataFrame | None]:
    """Every experiment of runs with its comparison (beside_ours); None where it has none."""
    return {e: beside_ours(runs, e) for e in runs["experiment"].unique()}


def write_comparison(results_dir, runs: pd.DataFrame, compared: dict | None = None) -> list:
    """Write comparison.csv and comparison.md for every experiment in runs that has
    published numbers (their `comparisons`, computed unless given); return the files
    written."""
    from pathlib import Path

    results_dir = Path(results_dir)
    compared = comparisons(runs) if compared is None else compared
    written = []
    experiments = [e for e in runs["experiment"].unique() if e in SOURCES]
    for experiment in experiments:
        comparison = compared[experiment]
        if comparison is None:
            continue
        suffix = "" if len(experiments) == 1 else f"_{experiment}"
        csv_path = results_dir / COMPARISON_CSV.replace(".csv", f"{suffix}.csv")
        md_path = results_dir / COMPARISON_MD.replace(".md", f"{suffix}.md")
        write_csv(comparison.assign(experiment=experiment), csv_path)
        text = comparison_markdown(comparison, experiment)
        atomic_write(md_path, lambda tmp, text=text: tmp.write_text(text))
        written += [csv_path, md_path]
    return written
