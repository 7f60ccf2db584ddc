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
  ranked within each workload (their mean score over its seeds): the workloads are the
  independent data sets Demšar's tests assume. The Friedman test asks whether any differ,
  the Nemenyi test which pairs do; scikit-posthocs computes the Nemenyi p-values and
  draws the diagram. With few workloads the test has little power: the critical
  difference is then most of the range of ranks. Ranking within each workload and seed
  is kept as a secondary view, labelled as such: its blocks are not independent, so its
  p-values are optimistic.
- Rank stability: how often each optimizer ranks best when each workload's seeds are
  resampled (a bootstrap over seeds).
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


# What the Friedman test ranks within: each workload once (its seeds' mean score), the
# independent data sets Demšar's tests assume; or, as a secondary view, each workload and
# seed, whose blocks share a workload and so are not independent (optimistic p-values).
BLOCKS = {"workload": "workload (mean over seeds)", "workload_seed": "workload × seed"}


def blocks(scores: pd.DataFrame, by: str = "workload") -> pd.DataFrame:
    """The scores as blocks × optimizers: one row per workload (the mean over its seeds),
    or with by="workload_seed" one row per workload and seed."""
    index = ["workload"] if by == "workload" else ["workload", "seed"]
    table = scores.pivot_table(index=index, columns="optimizer", values="score", sort=False)
    return table[list(scores["optimizer"].unique())]


def ranks(scores: pd.DataFrame, by: str = "workload") -> dict:
    """Average ranks (1 = best; ties share the mean rank) over the blocks (see BLOCKS), the
    Friedman test, the Nemenyi p-value of every pair and the critical difference at
    ALPHA."""
    table = blocks(scores, by).dropna()
    n, k = table.shape
    ranked = stats.rankdata(-table.to_numpy(), axis=1)
    average = pd.Series(ranked.mean(axis=0), index=table.columns, name="average_rank")
    result = {"average": average.sort_values(), "blocks": n, "by": by, "friedman_p": math.nan}
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


def rank_stability(scores: pd.DataFrame, resamples: int = RESAMPLES, seed: int = 0):
    """How stable the ranking by workload blocks is under the seeds' luck: each workload's
    seeds resampled with replacement (the same draw for every optimizer, as runs of a seed
    are paired), the average rank over workloads recomputed, `resamples` times. One row
    per optimizer: p_best, the share of resamples in which it has the best average rank
    (a tie for best shares the resample equally), and the 5% and 95% quantiles of its
    average rank."""
    rng = np.random.default_rng(seed)
    names = list(scores["optimizer"].unique())
    total = np.zeros((resamples, len(names)))
    workloads = scores["workload"].unique()
    for workload in workloads:
        table = (
            scores[scores["workload"] == workload]
            .pivot_table(index="seed", columns="optimizer", values="score")[names]
            .dropna()
        )
        drawn = rng.integers(0, len(table), size=(resamples, len(table)))
        means = table.to_numpy()[drawn].mean(axis=1)  # resamples × optimizers
        total += stats.rankdata(-means, axis=1)
    average = total / len(workloads)
    best = average == average.min(axis=1, keepdims=True)
    p_best = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    return pd.DataFrame(
        {
            "optimizer": names,
            "p_best": p_best,
            "average_rank": blocks(scores).dropna().rank(axis=1, ascending=False).mean().to_numpy(),
            "rank_q05": np.quantile(average, 0.05, axis=0),
            "rank_q95": np.quantile(average, 0.95, axis=0),
        }
    ).sort_values(["p_best", "average_rank"], ascending=[False, True], ignore_index=True)
