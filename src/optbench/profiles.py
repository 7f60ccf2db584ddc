"""Performance profiles across workloads (Dolan & Moré 2002; AlgoPerf's benchmark score).

On each workload, an optimizer's performance ratio r is its median time-to-target divided
by the best optimizer's (1 for the best, inf when its median run never reaches the target).
Its profile rho(tau) is the fraction of workloads on which r <= tau, drawn for tau from 1
to TAU_MAX on a log axis; its score is the area under the profile over [1, TAU_MAX],
divided by TAU_MAX - 1, so that 1 means fastest everywhere and 0 never within TAU_MAX of
the fastest.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

TAU_MAX = 4.0
TAUS = np.geomspace(1.0, TAU_MAX, 301)  # where the profile is tabulated and drawn


def ratios(medians: pd.DataFrame) -> pd.DataFrame:
    """Performance ratios from a table of median times (workloads × optimizers): each
    divided by the row's best; a workload no optimizer reaches the target on is inf all
    along (no optimizer is within any tau of a best that does not exist)."""
    best = medians.min(axis=1)
    table = medians.div(best.where(np.isfinite(best)), axis=0)
    return table.fillna(math.inf)


def profile(ratio_table: pd.DataFrame, taus: np.ndarray = TAUS) -> pd.DataFrame:
    """rho(tau) for every optimizer: one row per tau, one column per optimizer."""
    values = ratio_table.to_numpy()[None, :, :] <= taus[:, None, None]
    return pd.DataFrame(
        values.mean(axis=1), index=pd.Index(taus, name="tau"), columns=ratio_table.columns
    )


def score(ratio_table: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.Series:
    """The area under each optimizer's profile over [1, tau_max] over (tau_max - 1),
    computed exactly: rho is a step function, and a workload with ratio r <= tau_max adds
    (tau_max - r) / (tau_max - 1) divided by the number of workloads."""
    r = ratio_table.to_numpy(dtype=float)
    inside = np.where(r <= tau_max, (tau_max - np.maximum(r, 1.0)) / (tau_max - 1), 0.0)
    return pd.Series(inside.mean(axis=0), index=ratio_table.columns, name="profile_score")


def plot_profile(rho: pd.DataFrame, measure: str, n_workloads: int, path: Path) -> Path:
    """performance_profile_<measure>.png: see profile_figure."""
    from optbench.figures import save

    return save(profile_figure(rho, measure, n_workloads), path)


def shared_profiles(rho: pd.DataFrame) -> list[list[str]]:
    """The optimizers grouped by identical profiles (often several never reach the target
    within TAU_MAX, all at 0), in the order of their first member."""
    groups: dict[tuple, list[str]] = {}
    for name in rho.columns:
        groups.setdefault(tuple(rho[name].to_numpy()), []).append(name)
    return list(groups.values())


def profile_figure(rho: pd.DataFrame, measure: str, n_workloads: int):
    """One line per distinct profile, its legend entry naming every optimizer that has
    it, and each line its own colour, style and markers, placed apart along the line so
    that lines sharing a stretch stay told apart."""
    import textwrap

    from optbench.figures import plt, styles

    fig, ax = plt.subplots(figsize=(9, 5))
    groups = shared_profiles(rho)
    labels = [textwrap.fill(", ".join(names), 32) for names in groups]
    look = styles(labels)
    for k, (names, label) in enumerate(zip(groups, labels, strict=True)):
        every = (k * 7 % 40, 40)  # markers every 40 taus, started apart for each line
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
    ax.set_xscale("log")
    ticks = [1, 1.5, 2, 3, 4]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(1, rho.index.max())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"τ: time to target ({measure}) within τ × the fastest optimizer's")
    ax.set_ylabel(f"ρ(τ): fraction of the {n_workloads} workloads")
    ax.set_title(f"Performance profiles ({measure} to the target; median over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        title="optimizer (one line per distinct profile)",
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    return fig
