"""Performance profiles across workloads (Dolan & Moré 2002; AlgoPerf's benchmark score).

On each workload, an optimizer's performance ratio r is its median time-to-target divided
by the best optimizer's (1 for the best, inf when its median run never reaches the target).
Its profile rho(tau) is the fraction of workloads on which r <= tau, for tau from 1 to
TAU_MAX; its score is the area under the profile over [1, TAU_MAX] on a linear tau axis,
divided by TAU_MAX - 1, so that 1 means fastest everywhere and 0 never within TAU_MAX of
the fastest. The figure draws tau on that same linear axis, so the area a reader sees is
the score. docs/statistics.md sets these conventions beside AlgoPerf's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

TAU_MAX = 4.0
TAUS = np.linspace(1.0, TAU_MAX, 301)  # where the profile is tabulated, besides its steps


def ratios(medians: pd.DataFrame) -> pd.DataFrame:
    """Performance ratios from a table of median times (workloads × optimizers): each
    divided by the row's best; a workload no optimizer reaches the target on is inf all
    along (no optimizer is within any tau of a best that does not exist)."""
    best = medians.min(axis=1)
    table = medians.div(best.where(np.isfinite(best)), axis=0)
    return table.fillna(math.inf)


def profile(ratio_table: pd.DataFrame, taus: np.ndarray | None = None) -> pd.DataFrame:
    """rho(tau) for every optimizer: one row per tau, one column per optimizer. Unless taus
    are given, TAUS and every ratio within [1, TAU_MAX]: rho steps exactly at the ratios,
    so a step plot through these rows is the profile itself, not an approximation."""
    if taus is None:
        ratios_inside = ratio_table.to_numpy(dtype=float).ravel()
        ratios_inside = ratios_inside[(ratios_inside >= 1.0) & (ratios_inside <= TAU_MAX)]
        taus = np.union1d(TAUS, ratios_inside)
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
