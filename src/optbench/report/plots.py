"""Comparison plots, drawn from runs.csv alone so they can be redrawn without retraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optbench.analysis import published
from optbench.analysis.stats import final_rows, last_step_rows
from optbench.labels import by_protocol, label_settings
from optbench.report import figures
from optbench.report.figures import label_points, plt, room_for_labels, styles
from optbench.results.store import read_runs, summarize

CURVES = {  # file stem -> (metric, y-axis label)
    "test_accuracy": ("test_accuracy", "test accuracy (fraction correct)"),
    "test_loss": ("test_loss", "test loss (mean cross-entropy)"),
    "train_loss": ("train_loss", "training loss (mean over steps since last evaluation)"),
    "last_batch_loss": ("last_batch_loss", "last mini-batch loss before the evaluation"),
}
# Published points drawn on a curve's plot: metric -> marker ("final_test_accuracy" is the
# wizard tutorial's summary list, drawn on the accuracy plot with its own marker).
PUBLISHED_MARKERS = {
    "test_accuracy": "X",
    "final_test_accuracy": "*",
    "test_loss": "X",
    "last_batch_loss": "X",
}


# What a curve can be drawn against: x -> summary column, axis label.
X_COLUMNS = {
    "step": "step",
    "epoch": "epoch",
    "grad_evals": "grad_evals_mean",
    "wall_s": "wall_s_mean",
}
X_LABELS = {
    "step": "optimizer step",
    "epoch": "epoch (passes over the training set)",
    "grad_evals": "gradient evaluations (forward + backward passes, mean over seeds)",
    "wall_s": "training wall time (s, mean over seeds)",
}


def _title(protocol, n_seeds: int, what: str, spread: str = "mean ± std") -> str:
    over = "one seed: no spread" if n_seeds == 1 else f"{spread} over {n_seeds} seeds"
    return f"{what}: {protocol.experiment} protocol, {protocol.dataset}, {protocol.model} ({over})"


def log_scaled(summary: pd.DataFrame, metric: str) -> bool:
    """A loss spans decades as it falls: drawn on a log axis when any mean is positive."""
    return metric.endswith("loss") and bool((summary[f"{metric}_mean"] > 0).any())


def band(rows: pd.DataFrame, metric: str, log_axis: bool) -> tuple[np.ndarray, np.ndarray]:
    """The band around an optimizer's mean line. On a log axis, the seeds' interquartile
    range (25% to 75%): it stays positive where mean - std would fall to or below 0 and
    fill the bottom of the plot. Otherwise mean ± std, an accuracy's clipped to [0, 1]."""
    if log_axis:
        return rows[f"{metric}_q25"].to_numpy(), rows[f"{metric}_q75"].to_numpy()
    mean = rows[f"{metric}_mean"].to_numpy()
    std = np.nan_to_num(rows[f"{metric}_std"].to_numpy())  # one seed: no band
    low, high = mean - std, mean + std
    return (np.clip(low, 0, 1), np.clip(high, 0, 1)) if "accuracy" in metric else (low, high)


def _draw_published(ax, points: pd.DataFrame, metric: str, colors: dict) -> None:
    """The tutorials' one-seed numbers as large markers in their optimizer's colour."""
    labelled = set()
    for row in points.itertuples():
        if row.optimizer not in colors:
            continue
        kind = "published (one seed)" if row.metric == metric else "published summary"
        ax.scatter(
            row.step,
            row.published,
            marker=PUBLISHED_MARKERS[row.metric],
            s=70,
            color=colors[row.optimizer],
            edgecolors="black",
            linewidths=0.8,
            zorder=5,
            label=None if kind in labelled else kind,
        )
        labelled.add(kind)


def curve_figure(
    summary: pd.DataFrame,
    metric: str,
    label: str,
    title: str,
    published_points: pd.DataFrame | None = None,
    x: str = "step",
) -> plt.Figure:
    """Mean line with a ±std band per optimizer against x (step, epoch, grad_evals or
    wall_s, the mean over seeds); published one-seed points (columns optimizer, step,
    metric, published), if any, on top (against step only)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    optimizers = list(summary["optimizer"].unique())
    look = styles(optimizers)
    colors = {name: style["color"] for name, style in look.items()}
    log_axis = log_scaled(summary, metric)
    for name in optimizers:
        rows = summary[summary["optimizer"] == name]
        position = rows[X_COLUMNS[x]].to_numpy()
        diverged = int(rows["n_diverged"].max()) if "n_diverged" in rows else 0
        seeds = diverged + int(rows["n"].max())
        legend = name if not diverged else f"{name} ({diverged}/{seeds} diverged, left out)"
        mean = rows[f"{metric}_mean"].to_numpy()
        ax.plot(position, mean, markersize=4, label=legend, **look[name])
        ax.fill_between(position, *band(rows, metric, log_axis), color=colors[name], alpha=0.15)
    if published_points is not None and x == "step":  # none past our last step: no stretch
        shown = published_points[published_points["step"] <= summary["step"].max()]
        _draw_published(ax, shown, metric, colors)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(label)
    means = summary[f"{metric}_mean"]
    if means.isna().all():
        ax.text(
            0.5,
            0.5,
            "every run diverged: nothing to draw",
            transform=ax.transAxes,
            ha="center",
            va="center",
        )
        ax.set_xticks([]), ax.set_yticks([])  # an empty axis's ticks would mean nothing
    elif log_axis:
        ax.set_yscale("log")
    positive = summary[X_COLUMNS[x]][summary[X_COLUMNS[x]] > 0]
    if len(positive) and positive.max() / positive.min() > 300:  # e.g. batch 1 beside full batch
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="optimizer", fontsize=8, ncol=2 if len(optimizers) > 5 else 1)
    return fig


def plot_final_accuracy(runs: pd.DataFrame, title: str, path: Path) -> Path:
    """Every seed's final test accuracy as a point, with each optimizer's mean ± std,
    optimizers sorted from best to worst mean."""
    final = final_rows(runs)
    order = final.groupby("optimizer")["test_accuracy"].mean().sort_values(ascending=False)
    colors = figures.colors(list(runs["optimizer"].unique()))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order) + 2), 5))
    jitter = np.random.default_rng(0)  # fixed: the same files give the same picture
    for i, name in enumerate(order.index):
        mine = final[final["optimizer"] == name]
        diverged = int(mine["diverged"].sum()) if "diverged" in mine else 0
        if diverged:  # written just above the x axis
            ax.text(
                i,
                0.02,
                f"{diverged}/{len(mine)} diverged",
                ha="center",
                va="bottom",
                color="crimson",
                fontsize=8,
                transform=ax.get_xaxis_transform(),
            )
        values = mine["test_accuracy"].dropna().to_numpy()
        if len(values) == 0:
            continue
        x = i + jitter.uniform(-0.15, 0.15, len(values))
        ax.scatter(x, values, s=18, color=colors[name], alpha=0.8, zorder=3)
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.errorbar(
            i + 0.3,
            values.mean(),
            yerr=std,
            fmt="_",
            color="black",
            capsize=4,
            markersize=14,
            zorder=4,
        )
    ax.set_xticks(range(len(order)), order.index, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(order) - 0.4)  # an optimizer with no finite run keeps its place
    ax.set_xlabel("optimizer (best mean first); dots: seeds, bar: mean ± std")
    ax.set_ylabel("final test accuracy (fraction correct)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return figures.save(fig, path)


def plot_lr_sensitivity(runs: pd.DataFrame, title: str, path: Path) -> Path:
    """Final test accuracy against learning rate (log scale): mean ± std over the seeds that
    did not diverge, one line per optimizer; a star marks torch.optim's default lr."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    every = final_rows(runs, by=["optimizer", "lr"])
    final = every[~every["diverged"].astype(bool)]
    fig, ax = plt.subplots(figsize=(8, 5))
    look = styles(list(runs["optimizer"].unique()))
    colors = {name: style["color"] for name, style in look.items()}
    for name, rows in final.groupby("optimizer", sort=False):
        by_lr = rows.groupby("lr")["test_accuracy"]
        mean, std = by_lr.mean(), by_lr.std().fillna(0)
        ax.plot(mean.index, mean, markersize=4, label=name, **look[name])
        low, high = np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1)  # an accuracy
        ax.fill_between(mean.index, low, high, color=colors[name], alpha=0.2)
        default_file = files("optbench.configs").joinpath(f"optimizer/{name}.yaml")
        if default_file.is_file():
            default = float(OmegaConf.load(default_file.open()).lr)
            if np.isclose(mean.index, default).any():
                at = mean.index[np.isclose(mean.index, default)][0]
                star = {"marker": "*", "s": 220, "edgecolors": "black", "zorder": 5}
                ax.scatter(at, mean[at], color=colors[name], **star)
    lost = every.groupby(["optimizer", "lr"], sort=False)["diverged"].all()
    for name, lrs in lost[lost].reset_index().groupby("optimizer", sort=False)["lr"]:
        at_bottom = ax.get_xaxis_transform()  # x: the lr, y: just above the axis
        label = f"{name}: every seed diverged"
        ax.scatter(
            lrs,
            [0.04] * len(lrs),
            marker="X",
            s=60,
            color=colors[name],
            label=label,
            transform=at_bottom,
        )
    ax.scatter(
        [],
        [],
        marker="*",
        s=120,
        color="grey",
        edgecolors="black",
        label="torch.optim's default lr",
    )
    ax.set_xscale("log")
    ax.set_xlim(every["lr"].min() / 3, every["lr"].max() * 3)  # the diverged lrs too
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final test accuracy (fraction correct)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="optimizer", fontsize=8)
    return figures.save(fig, path)


def _published_points(runs: pd.DataFrame, protocol) -> pd.DataFrame | None:
    """The tutorial's published points for this protocol, placed at our optimizer steps."""
    if published.DATASET_AND_MODEL.get(protocol.experiment) != (protocol.dataset, protocol.model):
        return None
    points = published.published(protocol.experiment)
    steps_per_epoch = (runs["step"] / runs["epoch"]).iloc[0]
    points["step"] = np.where(
        points["x"] == "epoch", np.rint(points["at"] * steps_per_epoch), points["at"]
    )
    return points


def plot_all(
    results_dir: Path,
    x: str = "step",
    raw: pd.DataFrame | None = None,
    costs: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
) -> list[Path]:
    """Draw every plot of a results folder from its runs (runs.csv, read unless given as
    written: store.as_written), their summary (summary.csv's, computed unless given) and
    its costs (costs.csv, read where there is one unless given); return the files written.

    Curves are drawn against x ("step", "epoch" or "wall_s"; files for other than step
    end in _vs_<x>). A folder holding several protocols (e.g. a multirun over datasets)
    gets one set of plots per protocol, named with a suffix.
    """
    if x not in X_COLUMNS:
        raise ValueError(f"Cannot plot against {x!r}; valid choices: {', '.join(X_COLUMNS)}.")
    results_dir = Path(results_dir)
    raw = read_runs(results_dir) if raw is None else raw
    runs = label_settings(raw)
    written = []
    given = summary
    for protocol, subset, suffix in by_protocol(runs):
        # summary.csv's rows are this protocol's where it is the folder's only one
        summary = given if given is not None and not suffix else summarize(subset)
        n_seeds = int(subset["seed"].nunique())
        points = _published_points(subset, protocol)
        for stem, (metric, label) in CURVES.items():
            spread = "mean, band from 1st to 3rd quartile," if log_scaled(summary, metric) else None
            title = _title(protocol, n_seeds, label.split(" (")[0], spread or "mean ± std")
            wanted = [metric, "final_test_accuracy"] if metric == "test_accuracy" else [metric]
            own = None if points is None else points[points["metric"].isin(wanted)]
            figure = curve_figure(summary, metric, label, title, own, x)
            path = results_dir / f"{stem}{suffix}{'' if x == 'step' else f'_vs_{x}'}.png"
            written.append(figures.save(figure, path))
        if x != "step":
            continue
        raw_subset = raw.loc[subset.index]
        if raw_subset.groupby("optimizer")["lr"].nunique().max() >= 3:
            title = _title(protocol, n_seeds, "learning-rate sensitivity").replace(
                "mean ± std over", "final accuracy, mean ± std over"
            )
            written.append(
                plot_lr_sensitivity(raw_subset, title, results_dir / f"lr_sensitivity{suffix}.png")
            )
        title = _title(protocol, n_seeds, "final test accuracy").replace("mean ± std over", "over")
        written.append(
            plot_final_accuracy(subset, title, results_dir / f"final_test_accuracy{suffix}.png")
        )
    if costs is None and (results_dir / "costs.csv").is_file():
        costs = pd.read_csv(results_dir / "costs.csv")
    if costs is not None and len(list(by_protocol(runs))) == 1:
        written.append(plot_costs(runs, costs, results_dir))
    return written


def plot_costs(runs: pd.DataFrame, costs: pd.DataFrame, results_dir: Path) -> Path:
    """costs.png: see costs_figure."""
    return figures.save(costs_figure(runs, costs), results_dir / "costs.png")


def costs_figure(runs: pd.DataFrame, costs: pd.DataFrame) -> plt.Figure:
    """Final test accuracy (mean over seeds) against optimizer state bytes per parameter
    and against milliseconds per step, each point labelled with its optimizer."""
    final = last_step_rows(runs)
    accuracy = final[~final["diverged"].astype(bool)].groupby("optimizer")["test_accuracy"]
    table = costs.assign(accuracy=costs["optimizer"].map(accuracy.mean()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5 + 0.08 * len(table)), sharey=True)
    look = styles(list(table["optimizer"]))
    for ax, column, label in (
        (axes[0], "state_bytes_per_param", "optimizer state (bytes per model parameter)"),
        (axes[1], "ms_per_step", f"time per step of one run (ms, {table['device'].iloc[0]})"),
    ):
        values = table[column].to_numpy(dtype=float)
        for row, value in zip(table.itertuples(), values, strict=True):  # own marker each
            ax.scatter(value, row.accuracy, s=50, **look[row.optimizer] | {"linestyle": "none"})
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        spread = column == "ms_per_step" and values.max() > 30 * values.min()
        room_for_labels(ax, values, log=spread)
    _state_axis(axes[0], table["state_bytes_per_param"].max())
    axes[0].set_ylabel("final test accuracy (mean over seeds)")
    lost = list(table.loc[table["accuracy"].isna(), "optimizer"])  # nothing to place them at
    note = f"\n(not drawn, every seed diverged: {', '.join(lost)})" if lost else ""
    fig.suptitle(f"What each optimizer costs, and what it reaches{note}", fontsize=10)
    if len(lost) == len(table):
        axes[0].set_ylim(0, 1)
    fig.tight_layout()
    for ax, column in zip(axes, ("state_bytes_per_param", "ms_per_step"), strict=True):
        label_points(ax, table[column], table["accuracy"], list(table["optimizer"]))
    return fig


def _state_axis(ax, most: float) -> None:
    """Optimizer state comes in fp32 copies of the parameters (SGD 0, momentum 4, Adam 8
    bytes per parameter): ticks at those steps while they are few. Past 48 (L-BFGS keeps a
    history of them) a symlog axis, linear up to 4 so that SGD's 0 stays on it, with ticks
    at 0, 4, 16, 64, ..."""
    if most <= 48:
        ax.set_xticks(np.arange(0, most + 4, 4))
        return
    ax.set_xscale("symlog", linthresh=4, linscale=0.5)
    ticks = [0, *(4 ** np.arange(1, np.ceil(np.log(most) / np.log(4)) + 1))]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(-1, most * 3)
