"""Statistics across seeds: intervals and quartiles for the summary, and paired tests that
rank optimizers honestly.

Runs are paired by seed: a seed fixes the initial weights and the order of the mini-batches,
so two optimizers with the same seed differ only in the optimizer. Paired tests on the
per-seed differences are therefore much more sensitive than comparing two means.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from optbench.labels import by_protocol, interval, label_settings, mean_std

# SciPy is imported where it is used: it is slow to import (docs/speed.md), and a training
# command would otherwise spend that before its first step.

# The statistical settings every analysis shares, defined here only:
# the confidence of every interval (a mean's t-interval, a bootstrap interval, a median's
# distribution-free interval)
CONFIDENCE = 0.95
# the family-wise error rate of every test (the Holm-corrected pairwise tests and rerun
# check, the Nemenyi critical difference)
ALPHA = 0.05
# the bootstrap draws of an interval, and of each point of an expected-best curve
RESAMPLES = 2000


# The values each metric can take. An interval of a mean is clipped to them: with few seeds
# near a bound, mean ± t·s/√n spills over it (an accuracy interval of [-0.06, 0.25]), and
# clipping loses no coverage, since the true mean lies inside. Accuracy is a fraction; the
# losses (cross-entropy), gradient evaluations and seconds cannot go below 0.
RANGES = {"test_accuracy": (0.0, 1.0), "validation_accuracy": (0.0, 1.0)}


def metric_range(metric: str) -> tuple[float, float]:
    return RANGES.get(metric, (0.0, math.inf))


def t_interval(
    values: np.ndarray,
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float]:
    """The t-interval of the mean, mean ± t_{(1+c)/2, n-1} · s / √n, clipped to bounds (the
    values the metric can take); NaN below 2 values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats

    mean = values.mean()
    half_width = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    low, high = bounds
    return max(mean - half_width, low), min(mean + half_width, high)


DESCRIBED = ("ci_low", "ci_high", "median", "q25", "q75", "iqr")  # describe's keys


def describe(
    values: pd.Series, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict[str, float]:
    """The extra summary columns of one metric: 95% t-interval (clipped to bounds), median,
    quartiles, IQR."""
    values = values.dropna().to_numpy(dtype=float)
    low, high = t_interval(values, bounds=bounds)
    if len(values):
        q25, median, q75 = np.percentile(values, [25, 50, 75])
    else:
        q25 = median = q75 = math.nan
    return {
        "ci_low": low,
        "ci_high": high,
        "median": median,
        "q25": q25,
        "q75": q75,
        "iqr": q75 - q25,
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values is multiplied by
    (m − k + 1), then made non-decreasing and capped at 1."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


MIN_PAIRS = 2  # seeds in common that a paired test needs


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test on a − b.
    Identical runs (all differences zero) give p = 1: no evidence of any difference. Fewer
    than MIN_PAIRS pairs give NaN: no test can be computed."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(differences) < MIN_PAIRS:
        return math.nan, math.nan
    if np.allclose(differences, 0):
        return 1.0, 1.0
    from scipy import stats

    with warnings.catch_warnings():
        # differences equal but for float rounding (accuracies are multiples of 1/N, their
        # differences are not): SciPy warns of the precision lost, and its p is about 0,
        # as for a constant difference below
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        t_p = stats.ttest_rel(a, b).pvalue
    if np.isnan(t_p):  # a constant non-zero difference: as strong as evidence gets
        t_p = 0.0
    # Accuracies are counts of correct answers over N, so their differences are multiples of
    # 1/N, but float subtraction gives 0.9 - 0.8 and 0.8 - 0.7 different last bits: rounded
    # to 1e-9 (far above float error, far below 1/N for any test set under 10^8 examples),
    # equal counts are equal differences and genuine ties and zeros are exact. Zeros are
    # split between the positive and negative ranks (zsplit), rather than dropped as SciPy's
    # default does: a seed on which two optimizers tie is evidence of no difference, not
    # a seed to ignore.
    exact = np.round(differences, 9)
    wilcoxon_p = stats.wilcoxon(exact, zero_method="zsplit").pvalue
    return float(t_p), float(wilcoxon_p)


def final_rows(rows: pd.DataFrame, by: str | list[str] = "optimizer") -> pd.DataFrame:
    """ "The final rows" per optimizer: each optimizer's rows (of runs.csv or summary.csv)
    at its own last evaluation step. Optimizers of a folder combined from several jobs may
    have trained for different lengths; each ends where it ended. `by` names what counts
    as one optimizer (["optimizer", "lr"]: each learning rate of it)."""
    return rows[rows["step"] == rows.groupby(by)["step"].transform("max")]


def last_step_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """ "The final rows" of one protocol: every row at the last evaluation step of all, where
    every run of a job that trained to its end has its last row."""
    return rows[rows["step"] == rows["step"].max()]


def final_values(runs: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """One column per optimizer, one row per seed: the metric at each optimizer's last step,
    for the seeds every optimizer has and none diverged on (an optimizer whose every seed
    diverged is left out). Runs of several settings of one optimizer come labelled apart
    (labels.label_settings)."""
    runs = final_rows(runs)
    if "diverged" in runs:
        runs = runs[~runs["diverged"].astype(bool)]
    table = runs.pivot_table(index="seed", columns="optimizer", values=metric, aggfunc="first")
    return table.dropna(axis=1, how="all").dropna()  # an optimizer whose every seed diverged


def ranking(
    runs: pd.DataFrame, metric: str = "test_accuracy", alpha: float = ALPHA
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank optimizers by their mean final metric (higher is better) and test every pair,
    paired by seed.

    Returns (ranking, pairs). ranking: one row per optimizer with mean, std, n, the 95%
    t-interval (clipped to the metric's range), the Holm-adjusted paired-t p-value against
    the best, and `tied_with_best` (that p ≥ alpha: statistically indistinguishable from the
    best). pairs: every pair's mean difference, raw and Holm-adjusted p-values of the paired
    t-test, and the Wilcoxon signed-rank p-value (which cannot go below 0.0625 with 5
    seeds; it needs 6 or more pairs to reach 0.05).
    """
    table = final_values(runs, metric)
    seed_sets = _seed_sets(runs, table.index)
    order = table.mean().sort_values(ascending=False).index.tolist()
    pairs = _pairs(table, order, alpha)
    best = order[0]
    rows = []
    for rank, name in enumerate(order, start=1):
        values = table[name].to_numpy()
        low, high = t_interval(values, bounds=metric_range(metric))
        versus = pairs[(pairs["optimizer"] == best) & (pairs["other"] == name)]
        p_best = float(versus["t_p_holm"].iloc[0]) if name != best else 1.0
        if len(values) < MIN_PAIRS:  # no test, so not even the best ties with itself
            p_best = math.nan
        compared, left_out = seed_sets[name]
        rows.append(
            {
                "rank": rank,
                "optimizer": name,
                "mean": values.mean(),
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "n": len(values),
                "ci_low": low,
                "ci_high": high,
                "p_vs_best_holm": p_best,
                "tied_with_best": p_best >= alpha,
                "seeds": seeds_text(compared),
                "seeds_left_out": seeds_text(left_out),
            }
        )
    return pd.DataFrame(rows), pairs


def _pairs(table: pd.DataFrame, order: list[str], alpha: float) -> pd.DataFrame:
    """Every pair of optimizers (in `order`, the better first): the mean difference of their
    final values by seed, the paired tests' p-values, raw and Holm-adjusted."""
    pairs = []
    for i, first in enumerate(order):
        for second in order[i + 1 :]:
            t_p, wilcoxon_p = paired_tests(table[first], table[second])
            pairs.append(
                {
                    "optimizer": first,
                    "other": second,
                    "mean_difference": float((table[first] - table[second]).mean()),
                    "n_pairs": len(table),
                    "t_p": t_p,
                    "wilcoxon_p": wilcoxon_p,
                }
            )
    pairs = pd.DataFrame(
        pairs, columns=["optimizer", "other", "mean_difference", "n_pairs", "t_p", "wilcoxon_p"]
    )
    testable = len(table) >= MIN_PAIRS  # every pair has the same seeds: all or none
    pairs["t_p_holm"] = holm(pairs["t_p"].tolist()) if len(pairs) and testable else math.nan
    pairs["wilcoxon_p_holm"] = (
        holm(pairs["wilcoxon_p"].tolist()) if len(pairs) and testable else math.nan
    )
    pairs["significant"] = pairs["t_p_holm"] < alpha
    return pairs


def seeds_text(seeds) -> str:
    """Seeds as a reader writes them: "0-4", "0, 2, 5-7", "" for none."""
    seeds = sorted(int(s) for s in seeds)
    spans: list[list[int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _seed_sets(runs: pd.DataFrame, compared: pd.Index) -> dict[str, tuple[list, list]]:
    """Per optimizer: (the seeds the paired tests compare, its other seeds), the others
    being those some other optimizer lacks or that diverged."""
    return {
        name: (list(compared), sorted(set(mine["seed"]) - set(compared)))
        for name, mine in runs.groupby("optimizer", sort=False)
    }


def _p(value: float) -> str:
    """A p-value as the tables print it; NaN is a test that could not be computed."""
    return "cannot test" if math.isnan(value) else f"{value:.3g}"


def seeds_note(table: pd.DataFrame) -> list[str]:
    """The lines that say which seeds are compared, where an optimizer has others too."""
    if "seeds_left_out" not in table or not table["seeds_left_out"].fillna("").any():
        return []
    left_out = [
        f"{r.optimizer} seed{'s' if any(c in r.seeds_left_out for c in ',-') else ''} "
        f"{r.seeds_left_out}"
        for r in table.itertuples()
        if isinstance(r.seeds_left_out, str) and r.seeds_left_out
    ]
    return [
        f"Seeds compared: {table['seeds'].iloc[0] or 'none'}, the seeds every optimizer has "
        f"and none diverged on; left out: {'; '.join(left_out)}.",
        "",
    ]


def rankings(runs: pd.DataFrame, metric: str = "test_accuracy") -> dict[str, tuple]:
    """`ranking`'s (ranking, pairs) of every protocol in runs with two or more optimizer
    settings to rank, by the suffix of its files ("" where runs hold one protocol)."""
    ranked = {}
    for _, mine, suffix in by_protocol(label_settings(runs)):
        if mine["optimizer"].nunique() < 2 or final_values(mine, metric).empty:
            continue
        ranked[suffix] = ranking(mine, metric)
    return ranked


def ranking_markdown(
    table: pd.DataFrame, pairs: pd.DataFrame, metric: str, alpha: float = ALPHA
) -> str:
    lines = [
        f"# Ranking by final {metric.replace('_', ' ')}",
        "",
        "Runs are paired by seed (same initial weights, same mini-batches). p-values: paired "
        f"t-test on the per-seed differences, Holm-corrected over all {len(pairs)} pairs; "
        f"≈ marks optimizers statistically indistinguishable from the best at α = {alpha}.",
        "",
        *seeds_note(table),
        "| rank | optimizer | mean ± std (n) | 95% CI of the mean | p vs best (Holm) | |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rank} | {r.optimizer} | {mean_std(r.mean, r.std)} (n={r.n}) "
            f"| {interval(r.ci_low, r.ci_high)} | {_p(r.p_vs_best_holm)} "
            f"| {'≈ best' if r.tied_with_best else ''} |"
        )
    lines += [
        "",
        "## Every pair",
        "",
        "| optimizer | other | mean difference | pairs | t-test p | Holm | Wilcoxon p | Holm | |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in pairs.itertuples():
        lines.append(
            f"| {r.optimizer} | {r.other} | {r.mean_difference:+.4f} | {r.n_pairs} "
            f"| {_p(r.t_p)} | {_p(r.t_p_holm)} | {_p(r.wilcoxon_p)} | {_p(r.wilcoxon_p_holm)} "
            f"| {'significant' if r.significant else ''} |"
        )
    return "\n".join(lines) + "\n"
