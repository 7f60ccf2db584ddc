"""Aggregates across workloads and seeds that a few bad seeds cannot swing.

Scores. A run's final test accuracy is normalised on its workload: (accuracy - chance) /
(target - chance), so that 0 is guessing and 1 is the target; a diverged run scores 0.

- Interquartile mean (IQM) of an optimizer's scores over all workloads and seeds, with a
  95% stratified bootstrap interval: each workload's seeds are resampled on their own
  (Agarwal et al. 2021, rliable's method). SciPy does both: `trim_mean(x, 0.25)` is the
  IQM, and `scipy.stats.bootstrap` resamples each of several samples independently, which
  with one sample per workload is exactly the stratified bootstrap.
- Probability of improvement P(X > Y): on each workload the chance that a run of X beats a
  run of Y (ties count half), the Mann-Whitney U statistic over m·n; averaged over the
  workloads (rliable's definition), with the same stratified bootstrap interval.
- Average ranks and the critical-difference diagram (Demšar 2006): the optimizers are
  ranked within each block of one workload and one seed (runs of a seed share initial
  weights and batches), the Friedman test asks whether any differ, the Nemenyi test which
  pairs do; scikit-posthocs computes the Nemenyi p-values and draws the diagram.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from optbench.analysis.stats import ALPHA, CONFIDENCE, RESAMPLES


def normalised_scores(times: pd.DataFrame, targets: dict, chance: dict) -> pd.DataFrame:
    """times (workload, optimizer, seed, final_test_accuracy) with a `score` column."""
    accuracy = times["final_test_accuracy"].fillna(times["workload"].map(chance))
    low, high = times["workload"].map(chance), times["workload"].map(targets)
    return times.assign(score=(accuracy - low) / (high - low))


def _samples(scores: pd.DataFrame, optimizer: str) -> list[np.ndarray]:
    mine = scores[scores["optimizer"] == optimizer]
    return [group["score"].to_numpy() for _, group in mine.groupby("workload", sort=True)]


def iqm(values: np.ndarray, axis=None) -> float | np.ndarray:
    """The mean of the middle half: scipy's trim_mean cutting a quarter from each end."""
    return stats.trim_mean(values, 0.25, axis=axis)


def _stratified(samples: list[np.ndarray], statistic, seed: int) -> tuple[float, float]:
    """The 95% percentile interval of `statistic` over stratified bootstrap resamples; NaN
    when some stratum has a single run (nothing to resample)."""
    if min(len(s) for s in samples) < 2:
        return math.nan, math.nan
    result = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=RESAMPLES,
        paired=False,
        vectorized=True,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def iqm_table(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per optimizer: the IQM of its normalised scores and its stratified interval."""
    rows = []
    for optimizer in scores["optimizer"].unique():
        samples = _samples(scores, optimizer)

        def pooled_iqm(*resampled, axis=-1):
            return iqm(np.concatenate(resampled, axis=axis), axis=axis)

        low, high = _stratified(samples, pooled_iqm, seed)
        rows.append(
            {
                "optimizer": optimizer,
                "iqm": float(iqm(np.concatenate(samples))),
                "iqm_low": low,
                "iqm_high": high,
                "mean": float(np.concatenate(samples).mean()),
                "runs": sum(len(s) for s in samples),
            }
        )
    return pd.DataFrame(rows).sort_values("iqm", ascending=False, kind="stable")


def _beats(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over every pair of a run of x and one of y (last axis)."""
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))


def probability_of_improvement(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every ordered pair of optimizers: P(X > Y) averaged over workloads (each workload's
    from SciPy's Mann-Whitney U) with its stratified bootstrap interval. P(Y > X) is
    1 - P(X > Y) on the same resamples, so each pair is resampled once."""
    names = list(scores["optimizer"].unique())
    rows = []
    for i, x_name in enumerate(names):
        for y_name in names[i + 1 :]:
            xs, ys = _samples(scores, x_name), _samples(scores, y_name)
            pairs = zip(xs, ys, strict=True)
            point = np.mean(
                [stats.mannwhitneyu(x, y).statistic / (len(x) * len(y)) for x, y in pairs]
            )
            n = len(xs)

            def averaged(*resampled, axis=-1, n=n):
                pairs = zip(resampled[:n], resampled[n:], strict=True)
                return np.mean([_beats(x, y) for x, y in pairs], axis=0)

            low, high = _stratified(xs + ys, averaged, seed)
            rows.append(
                {
                    "optimizer": x_name,
                    "other": y_name,
                    "probability": float(point),
                    "low": low,
                    "high": high,
                }
            )
            rows.append(
                {
                    "optimizer": y_name,
                    "other": x_name,
                    "probability": 1 - float(point),
                    "low": 1 - high,
                    "high": 1 - low,
                }
            )
    return pd.DataFrame(rows)


def blocks(scores: pd.DataFrame) -> pd.DataFrame:
    """The scores as blocks (one row per workload and seed) × optimizers."""
    return scores.pivot_table(
        index=["workload", "seed"], columns="optimizer", values="score", sort=False
    )[list(scores["optimizer"].unique())]


def ranks(scores: pd.DataFrame) -> dict:
    """Average ranks (1 = best; ties share the mean rank) over the blocks, the Friedman
    test, the Nemenyi p-value of every pair and the critical difference at ALPHA."""
    table = blocks(scores).dropna()
    n, k = table.shape
    ranked = stats.rankdata(-table.to_numpy(), axis=1)
    average = pd.Series(ranked.mean(axis=0), index=table.columns, name="average_rank")
    result = {"average": average.sort_values(), "blocks": n, "friedman_p": math.nan}
    result["critical_difference"] = (
        (
            stats.studentized_range.ppf(1 - ALPHA, k, np.inf)
            / math.sqrt(2)
            * math.sqrt(k * (k + 1) / (6 * n))
        )
        if k >= 2 and n >= 1
        else math.nan
    )
    if k >= 3 and n >= 2:
        import scikit_posthocs  # imports statsmodels: only where a suite is analysed

        result["friedman_p"] = float(stats.friedmanchisquare(*table.to_numpy().T).pvalue)
        result["nemenyi"] = scikit_posthocs.posthoc_nemenyi_friedman(table.to_numpy())
        result["nemenyi"].index = result["nemenyi"].columns = table.columns
    return result
