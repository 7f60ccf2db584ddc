"""costs.png: what each optimizer setting costs (optimizer state bytes per parameter,
milliseconds per step; costs.csv) beside the final accuracy it reaches, each point labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optbench.figures import label_points, plt, room_for_labels, save, styles


def plot_costs(runs: pd.DataFrame, costs: pd.DataFrame, results_dir: Path) -> Path:
    """costs.png: see costs_figure."""
    return save(costs_figure(runs, costs), results_dir / "costs.png")


def costs_figure(runs: pd.DataFrame, costs: pd.DataFrame) -> plt.Figure:
    """Final test accuracy (mean over seeds) against optimizer state bytes per parameter
    and against milliseconds per step, each point labelled with its optimizer."""
    final = runs[runs["step"] == runs["step"].max()]
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
