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
