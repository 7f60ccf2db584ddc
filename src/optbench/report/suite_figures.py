"""The suite's figures: performance profiles, the IQM of normalised scores, the probability
of improvement and the critical-difference diagram, drawn from what analysis computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optbench.analysis import profiles
from optbench.analysis.aggregates import BLOCKS
from optbench.analysis.stats import ALPHA


def plot_profile(ratio_table: pd.DataFrame, measure: str, path: Path) -> Path:
    """performance_profile_<measure>.png of a table of performance ratios (workloads ×
    optimizers): see profile_figure."""
    from optbench.report.figures import save

    rho, scores = profiles.profile(ratio_table), profiles.score(ratio_table)
    return save(profile_figure(rho, measure, len(ratio_table), scores), path)


def shared_profiles(rho: pd.DataFrame) -> list[list[str]]:
    """The optimizers grouped by identical profiles (often several never reach the target
    within TAU_MAX, all at 0), in the order of their first member."""
    groups: dict[tuple, list[str]] = {}
    for name in rho.columns:
        groups.setdefault(tuple(rho[name].to_numpy()), []).append(name)
    return list(groups.values())


def profile_figure(
    rho: pd.DataFrame, measure: str, n_workloads: int, scores: pd.Series | None = None
):
    """One line per distinct profile, its legend entry naming every optimizer that has
    it (with its score: the area under the line, over TAU_MAX - 1), and each line its own
    colour, style and markers, placed apart along the line so that lines sharing a
    stretch stay told apart. tau is on a linear axis, the axis the score integrates on."""
    import textwrap

    from optbench.report.figures import plt, styles

    fig, ax = plt.subplots(figsize=(9, 5))
    groups = shared_profiles(rho)
    labels = [textwrap.fill(", ".join(names), 32) for names in groups]
    if scores is not None:
        scored = zip(labels, groups, strict=True)
        labels = [f"{label} (score {scores[names[0]]:.3f})" for label, names in scored]
    look = styles(labels)
    for k, (names, label) in enumerate(zip(groups, labels, strict=True)):
        every = (k * 7 % 40, 40)  # markers every 40 rows, started apart for each line
        shared = f"\n(the same profile: {len(names)} optimizers)" if len(names) > 1 else ""
        ax.step(
            rho.index,
            rho[names[0]],
            where="post",
            linewidth=1.8,
            markersize=5,
            markevery=every,
            label=label + shared,
            **look[label],
        )
    ticks = np.arange(1.0, rho.index.max() + 0.25, 0.5)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(1, rho.index.max())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"τ: time to target ({measure}) within τ × the fastest optimizer's")
    ax.set_ylabel(f"ρ(τ): fraction of the {n_workloads} workloads")
    ax.set_title(f"Performance profiles ({measure} to the target; median over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        title=f"optimizer (score: the area under its line ÷ {rho.index.max() - 1:g})",
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    return fig


def plot_critical_difference(result: dict, path: Path) -> Path | None:
    """The critical-difference diagram: average ranks on an axis, bars joining the
    optimizers the Nemenyi test does not tell apart at ALPHA."""
    if "nemenyi" not in result:
        return None
    import scikit_posthocs
    from matplotlib.colors import to_hex

    from optbench.report.figures import colors, plt, save

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(result["average"]) + 1.5))
    names = list(result["nemenyi"].columns)  # the suite's order: each its colour elsewhere
    scikit_posthocs.critical_difference_diagram(
        result["average"],
        result["nemenyi"],
        ax=ax,
        color_palette={name: to_hex(color) for name, color in colors(names).items()},
        label_fmt_left="{label} ({rank:.1f})",  # .2g, the default, writes rank 10 as 1e+01
        label_fmt_right="({rank:.1f}) {label}",
    )
    secondary = " (secondary view: blocks not independent)" if result["by"] != "workload" else ""
    ax.set_title(
        f"Average rank over {result['blocks']} blocks: {BLOCKS[result['by']]}{secondary}\n"
        f"bars: no significant difference (Nemenyi, α = {ALPHA}, critical difference "
        f"{result['critical_difference']:.2f}); Friedman p = {result['friedman_p']:.2g}",
        fontsize=9,
        pad=24,  # above the rank axis's numbers, drawn on the top edge
    )
    return save(fig, path)


def plot_rank_stability(stability: pd.DataFrame, n_workloads: int, path: Path) -> Path:
    """rank_stability.png: how often each optimizer ranks best over bootstrap resamples of
    the seeds (bars), beside its average rank with the 5-95% range of those resamples."""
    from optbench.report.figures import colors, plt, save

    names = list(stability["optimizer"])
    look = colors(names)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 0.35 * len(names) + 1.8), sharey=True, width_ratios=(1, 1.4)
    )
    y = np.arange(len(names))[::-1]  # the most often best on top
    left.barh(y, stability["p_best"], color=[look[n] for n in names])
    for yi, p in zip(y, stability["p_best"], strict=True):
        left.text(p + 0.01, yi, f"{p:.2f}", va="center", fontsize=8)
    left.set_xlim(0, 1.1)
    left.set_yticks(y, names)
    left.set_xlabel("P(best average rank) over resamples of the seeds")
    error = [
        stability["average_rank"] - stability["rank_q05"],
        stability["rank_q95"] - stability["average_rank"],
    ]
    right.errorbar(stability["average_rank"], y, xerr=np.clip(error, 0, None), fmt="o", capsize=3)
    right.set_xlabel("average rank over the workloads (1: best), 5-95% of resamples")
    right.invert_xaxis()  # best to the right, as the bars on the left grow
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"Rank stability: each of the {n_workloads} workloads' seeds resampled with "
        "replacement, the same draw for every optimizer",
        fontsize=10,
    )
    return save(fig, path)


def plot_iqm(table: pd.DataFrame, path: Path) -> Path:
    from optbench.report.figures import plt, save

    table = table.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.5))
    error = [table["iqm"] - table["iqm_low"], table["iqm_high"] - table["iqm"]]
    ax.errorbar(table["iqm"], table["optimizer"], xerr=np.nan_to_num(error), fmt="o", capsize=3)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("IQM of normalised final accuracy (0: chance, 1: the target), 95% CI")
    ax.grid(True, axis="x", alpha=0.3)
    return save(fig, path)


def plot_probability(probability: pd.DataFrame, path: Path) -> Path:
    """probability_of_improvement.png: see probability_figure."""
    from optbench.report.figures import save

    return save(probability_figure(probability), path)


def probability_figure(probability: pd.DataFrame):
    """P(row beats column) as a heatmap, each cell's number in black or white, whichever
    reads better on the cell's colour."""
    from optbench.report.figures import plt, text_color_on

    order = list(dict.fromkeys(probability["optimizer"]))
    matrix = probability.pivot(index="optimizer", columns="other", values="probability")
    matrix = matrix.reindex(index=order, columns=order)
    fig, ax = plt.subplots(figsize=(0.6 * len(order) + 3, 0.5 * len(order) + 2))
    image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), order)
    for i, row in enumerate(matrix.to_numpy(dtype=float)):
        for j, value in enumerate(row):
            if value == value:  # not NaN (the diagonal)
                color = text_color_on(image.cmap(image.norm(value)))
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="P(row beats column)")
    ax.set_title("Probability of improvement, averaged over workloads", fontsize=10)
    return fig


def spread(values: np.ndarray, gap: float) -> np.ndarray:
    """Label positions near values, in the same order, at least gap apart (labels of
    tied or close ranks would overlap): pushed apart downwards, then centred on the values."""
    order = np.argsort(values, kind="stable")
    placed = np.asarray(values, dtype=float)[order].copy()
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    placed -= (placed.mean() - np.asarray(values, dtype=float)[order].mean()) if len(placed) else 0
    out = np.empty_like(placed)
    out[order] = placed
    return out


def plot_tracks(table: pd.DataFrame, friedman: dict, path: Path) -> Path:
    """tracks.png: each optimizer's average rank with its defaults (left) and tuned
    (right), joined by a line: green when it climbs 3 places or more when tuned, red when it
    falls as far, grey otherwise; each track's critical difference drawn beside it."""
    from optbench.report.figures import plt, save

    k = len(table)
    fig, ax = plt.subplots(figsize=(8, 0.32 * k + 2.2))
    left, right = table["average_rank_defaults"].to_numpy(), table["average_rank_tuned"].to_numpy()
    gap = 0.45  # in ranks: a label's height at this figure's size
    for a, b, up in zip(left, right, table["places_up"], strict=True):
        color = "tab:green" if up >= 3 else "tab:red" if up <= -3 else "0.6"
        ax.plot([0, 1], [a, b], color=color, lw=2 if abs(up) >= 3 else 1, marker="o")
    for x, ranks, side, align in ((0, left, -0.04, "right"), (1, right, 0.04, "left")):
        for name, rank, y in zip(table["optimizer"], ranks, spread(ranks, gap), strict=True):
            text = f"{name} {rank:.2f}" if align == "right" else f"{rank:.2f} {name}"
            ax.text(x + side, y, text, ha=align, va="center", fontsize=8)
            if abs(y - rank) > 1e-9:
                ax.plot([x, x + side * 0.8], [rank, y], color="0.8", lw=0.5)
    for x, track in ((-0.75, "defaults"), (1.75, "tuned")):
        cd = float(friedman[track]["critical_difference"])
        if cd == cd:  # not NaN
            top = 1.0
            ax.plot([x, x], [top, top + cd], color="k", lw=2)
            ax.text(x, top + cd + 0.2, f"CD {cd:.2f}", ha="center", va="top", fontsize=8)
    ax.set_xlim(-0.9, 1.9)
    ax.set_ylim(k + 0.7, 0.3)  # rank 1 on top
    ax.set_xticks([0, 1], ["defaults\n(as shipped)", "tuned\n(same budget)"])
    ax.set_ylabel("average rank over the workloads (1: best)")
    ax.grid(True, axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        "Where the ranking changes when every optimizer is tuned\n"
        "green: up 3 places or more, red: down 3 or more; "
        "CD: each track's Nemenyi critical difference",
        fontsize=9,
    )
    return save(fig, path)
