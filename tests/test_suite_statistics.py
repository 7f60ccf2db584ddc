"""The suite's statistics against independent computations: time-to-target and the median's
interval by hand and from the binomial distribution, performance profiles against numerical
integration, the IQM and its stratified bootstrap against a plain NumPy resampling loop, the
probability of improvement against counting every pair, and the ranks, Friedman and Nemenyi
tests against Demšar's formulas and table."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from optbench.analysis import aggregates, profiles, targets
from optbench.compose.jobs import compose_plan
from optbench.config.schema import check_target
from optbench.errors import ConfigError
from optbench.workloads import WORKLOADS, preset_path

INF = math.inf


def a_run(optimizer, seed, accuracies, diverged_from=None, every=100):
    steps = [every * (i + 1) for i in range(len(accuracies))]
    return pd.DataFrame(
        {
            "optimizer": optimizer,
            "seed": seed,
            "step": steps,
            "epoch": [s / 600 for s in steps],
            "grad_evals": steps,
            "wall_s": [0.01 * s for s in steps],
            "test_accuracy": accuracies,
            "diverged": [diverged_from is not None and s >= diverged_from for s in steps],
        }
    )


def test_time_to_target_is_the_first_evaluation_at_the_target_and_inf_when_never():
    runs = pd.concat(
        [
            a_run("fast", 0, [0.5, 0.9, 0.95, 0.97]),
            a_run("slow", 0, [0.5, 0.6, 0.8, 0.9]),
            a_run("never", 0, [0.5, 0.6, 0.7, 0.8]),
            # reaches 0.9 at step 300, but diverged from step 300 on: that evaluation is lost
            a_run("broke", 0, [0.5, 0.6, 0.95, 0.1], diverged_from=300),
        ]
    )
    times = targets.run_times(runs, 0.9).set_index("optimizer")
    assert times.loc["fast", "steps"] == 200 and times.loc["fast", "seconds"] == pytest.approx(2.0)
    assert times.loc["fast", "epochs"] == pytest.approx(200 / 600)
    assert times.loc["slow", "steps"] == 400 and times.loc["slow", "reached"]
    assert times.loc["never", "steps"] == INF and not times.loc["never", "reached"]
    assert times.loc["broke", "steps"] == INF and times.loc["broke", "diverged"]
    assert math.isnan(times.loc["broke", "final_test_accuracy"])
    assert times.loc["broke", "best_test_accuracy"] == 0.6  # before it diverged


@pytest.mark.parametrize("n", [2, 3, 5, 6, 9, 10])
def test_the_median_interval_is_the_narrowest_order_statistic_interval_covering_95(n):
    values = np.arange(n, 0, -1, dtype=float)  # unsorted on purpose
    median, low, high, coverage = targets.median_interval(values)
    assert median == np.median(values)
    j = int(low)  # the values are 1..n, so low is the j of x_(j)
    assert high == n + 1 - j
    # coverage of [x_(j), x_(n+1-j)]: at least j and at most n-j of n fair coin flips
    by_hand = sum(math.comb(n, i) for i in range(j, n - j + 1)) / 2**n
    assert coverage == pytest.approx(by_hand)
    coverages = {
        jj: sum(math.comb(n, i) for i in range(jj, n - jj + 1)) / 2**n
        for jj in range(1, n // 2 + 1)
    }
    enough = [jj for jj, c in coverages.items() if c >= 0.95]
    assert j == (max(enough) if enough else 1)  # the narrowest that covers 95%, else the range


def test_the_median_time_is_infinite_when_half_the_seeds_or_more_never_reach():
    assert targets.median_interval(np.array([100, INF, INF]))[:3] == (INF, 100, INF)
    assert targets.median_interval(np.array([100, 200, INF]))[0] == 200
    assert targets.median_interval(np.array([100, INF]))[0] == INF


def test_a_target_is_the_best_reference_median_of_each_runs_best_accuracy():
    runs = pd.concat(
        [
            a_run("adamw", 0, [0.90, 0.97, 0.96]),  # best 0.97
            a_run("adamw", 1, [0.91, 0.95, 0.98]),  # best 0.98
            a_run("adamw", 2, [0.92, 0.93, 0.94]),  # best 0.94 -> median 0.97
            a_run("nesterov", 0, [0.96, 0.9755, 0.97]),
            a_run("nesterov", 1, [0.9755, 0.97, 0.97]),
            a_run("nesterov", 2, [0.5, 0.99, 0.1], diverged_from=200),  # its 0.99 does not count
        ]
    )
    value, medians = targets.derive(runs)
    assert medians == {"adamw": 0.97, "nesterov": 0.9755}
    assert value == 0.9755


def test_a_derived_target_replaces_the_presets_section_and_keeps_the_rest(tmp_path):
    from optbench.workloads import preset_path

    preset = tmp_path / "mnist_ffnn.yaml"
    preset.write_text(preset_path("mnist_ffnn").read_text())
    head = preset.read_text().split(targets.MARKER)[0]
    for value in (0.9712, 0.9705):
        derived = targets.derivation({"adamw": value}, [0, 1], tmp_path, "optbench 0.1.0", "abc")
        targets.write_into_preset(preset, value, derived)
    text = preset.read_text()
    assert text.startswith(head) and text.count(targets.MARKER) == 1
    loaded = OmegaConf.load(preset)
    assert loaded.target.test_accuracy == 0.9705
    assert (
        loaded.target.derived.reference.adamw == 0.9705 and loaded.experiment_name == "mnist_ffnn"
    )


@pytest.mark.parametrize("value", [0, -0.5, 1.5, True])
def test_a_target_outside_zero_to_one_is_refused(value):
    with pytest.raises(ConfigError, match="in \\(0, 1\\]"):
        check_target(value, "mnist_ffnn")


# ---------------------------------------------------------------------------------------
# Performance profiles

MEDIANS = pd.DataFrame(
    {"a": [100, 300, INF, 50], "b": [200, 100, 400, INF], "c": [150, INF, 1000, 40]},
    index=["w1", "w2", "w3", "w4"],
)


def test_performance_ratios_divide_by_the_fastest_on_each_workload():
    ratios = profiles.ratios(MEDIANS)
    assert ratios.loc["w1"].tolist() == [1.0, 2.0, 1.5]
    assert ratios.loc["w2"].tolist() == [3.0, 1.0, INF]
    assert ratios.loc["w3"].tolist() == [INF, 1.0, 2.5]
    assert ratios.loc["w4"].tolist() == [1.25, INF, 1.0]
    nobody = profiles.ratios(pd.DataFrame({"a": [INF], "b": [INF]}))
    assert nobody.iloc[0].tolist() == [INF, INF]


def test_the_profile_score_is_the_normalised_area_under_rho():
    ratios = profiles.ratios(MEDIANS)
    rho = profiles.profile(ratios, np.array([1.0, 1.25, 2.0, 4.0]))
    assert rho.loc[1.0].tolist() == [0.25, 0.5, 0.25]  # each is the fastest on some workloads
    assert rho.loc[4.0].tolist() == [0.75, 0.75, 0.75]
    # numerical integration of the step function over a fine grid
    taus = np.linspace(1, profiles.TAU_MAX, 300_001)
    fine = profiles.profile(ratios, taus)
    numeric = np.trapezoid(fine.to_numpy(), taus, axis=0) / (profiles.TAU_MAX - 1)
    np.testing.assert_allclose(profiles.score(ratios).to_numpy(), numeric, atol=1e-4)
    # by hand for "a": ratios 1, 3, inf, 1.25 -> (3 + 1 + 0 + 2.75) / 3 / 4
    assert profiles.score(ratios)["a"] == pytest.approx((3 + 1 + 0 + 2.75) / 3 / 4)


# ---------------------------------------------------------------------------------------
# Robust aggregates


def scores_frame(values: dict) -> pd.DataFrame:
    """{optimizer: {workload: [score per seed]}} -> the long frame aggregates take."""
    rows = [
        {"optimizer": o, "workload": w, "seed": seed, "score": s}
        for o, per in values.items()
        for w, seeds in per.items()
        for seed, s in enumerate(seeds)
    ]
    return pd.DataFrame(rows)


def test_normalised_scores_put_chance_at_zero_the_target_at_one_and_divergence_at_chance():
    times = pd.DataFrame(
        {
            "workload": ["w", "w", "w"],
            "optimizer": ["a", "b", "c"],
            "seed": [0, 0, 0],
            "final_test_accuracy": [0.1, 0.95, math.nan],
        }
    )
    scores = aggregates.normalised_scores(times, {"w": 0.95}, {"w": 0.1})["score"]
    assert scores.tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_iqm_is_the_mean_of_the_middle_half():
    values = np.array([9.0, 1, 5, 3, 100, 4, 2, -50])
    middle = np.sort(values)[2:6]
    assert aggregates.iqm(values) == pytest.approx(middle.mean())


RNG = np.random.default_rng(1)
UNEVEN = {  # workloads on very different levels: a stratified bootstrap keeps each one's share
    "a": {
        "w1": RNG.normal(0.2, 0.05, 6),
        "w2": RNG.normal(0.9, 0.05, 6),
        "w3": RNG.normal(0.5, 0.1, 6),
    },
    "b": {
        "w1": RNG.normal(0.3, 0.05, 6),
        "w2": RNG.normal(0.8, 0.05, 6),
        "w3": RNG.normal(0.6, 0.1, 6),
    },
}


def by_hand_interval(samples, statistic, stratified: bool, resamples=20_000):
    """The 95% percentile interval of statistic over resamples drawn with plain NumPy: each
    sample resampled on its own (stratified), or all of them pooled. statistic takes the
    drawn samples, one row per resample."""
    rng = np.random.default_rng(7)
    if stratified:
        drawn = [s[rng.integers(0, len(s), (resamples, len(s)))] for s in samples]
    else:
        pooled = np.concatenate(samples)
        drawn = [pooled[rng.integers(0, len(pooled), (resamples, len(pooled)))]]
    return np.percentile(statistic(drawn), [2.5, 97.5])


def test_the_iqm_interval_is_a_stratified_bootstrap():
    table = aggregates.iqm_table(scores_frame(UNEVEN)).set_index("optimizer")
    samples = [UNEVEN["a"][w] for w in ("w1", "w2", "w3")]
    pooled = np.concatenate(samples)
    assert table.loc["a", "iqm"] == pytest.approx(stats.trim_mean(pooled, 0.25))

    def statistic(drawn):
        return stats.trim_mean(np.concatenate(drawn, axis=1), 0.25, axis=1)

    low, high = by_hand_interval(samples, statistic, stratified=True)
    assert table.loc["a", "iqm_low"] == pytest.approx(low, abs=0.01)
    assert table.loc["a", "iqm_high"] == pytest.approx(high, abs=0.01)
    plain_low, plain_high = by_hand_interval(samples, statistic, stratified=False)
    assert high - low < 0.8 * (plain_high - plain_low)  # stratifying matters here


def test_probability_of_improvement_counts_every_pair_of_runs_on_each_workload():
    values = {
        "a": {"w1": [0.1, 0.5, 0.5], "w2": [0.9, 0.2, 0.4]},
        "b": {"w1": [0.5, 0.3, 0.0], "w2": [0.4, 0.4, 0.1]},
    }
    table = aggregates.probability_of_improvement(scores_frame(values))
    table = table.set_index(["optimizer", "other"])["probability"]

    def by_hand(x, y):
        wins = sum((xi > yj) + 0.5 * (xi == yj) for xi, yj in product(x, y))
        return wins / (len(x) * len(y))

    expected = np.mean([by_hand(values["a"][w], values["b"][w]) for w in ("w1", "w2")])
    assert table["a", "b"] == pytest.approx(expected)
    assert table["a", "b"] + table["b", "a"] == pytest.approx(1.0)


def test_the_probability_interval_is_a_stratified_bootstrap():
    table = aggregates.probability_of_improvement(scores_frame(UNEVEN))
    row = table[(table["optimizer"] == "a") & (table["other"] == "b")].iloc[0]
    workloads = ("w1", "w2", "w3")
    samples = [UNEVEN["a"][w] for w in workloads] + [UNEVEN["b"][w] for w in workloads]

    def statistic(drawn):
        pairs = zip(drawn[:3], drawn[3:], strict=True)
        return np.mean([(x[:, :, None] > y[:, None, :]).mean(axis=(1, 2)) for x, y in pairs], 0)

    low, high = by_hand_interval(samples, statistic, stratified=True)
    assert row["low"] == pytest.approx(low, abs=0.03) and row["high"] == pytest.approx(
        high, abs=0.03
    )


def test_ranks_friedman_and_nemenyi_follow_demsar():
    rng = np.random.default_rng(3)
    values = {  # four optimizers, two workloads x 4 seeds = 8 blocks
        name: {w: list(rng.normal(level, 0.1, 4)) for w in ("w1", "w2")}
        for name, level in (("a", 1.0), ("b", 0.9), ("c", 0.5), ("d", 0.45))
    }
    result = aggregates.ranks(scores_frame(values), by="workload_seed")
    table = aggregates.blocks(scores_frame(values), by="workload_seed").to_numpy()
    assert result["blocks"] == 8
    n, k = table.shape
    by_hand = np.array([[sorted(-row).index(-v) + 1 for v in row] for row in table])  # no ties
    np.testing.assert_allclose(result["average"][list("abcd")], by_hand.mean(axis=0))
    r = by_hand.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)
    assert result["friedman_p"] == pytest.approx(stats.chi2.sf(chi2, k - 1))
    # Demšar's table: q_0.05 = 2.569 for k = 4 (the studentized range over sqrt 2)
    assert result["critical_difference"] == pytest.approx(
        2.569 * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3
    )
    q = abs(r[0] - r[3]) / math.sqrt(k * (k + 1) / (6 * n))
    nemenyi = stats.studentized_range.sf(q * math.sqrt(2), k, np.inf)
    assert result["nemenyi"].loc["a", "d"] == pytest.approx(nemenyi, rel=1e-3)


def test_ranks_by_default_block_by_workload_on_the_mean_over_seeds():
    """Demšar's blocks are independent data sets: one per workload, each optimizer's score
    there the mean over its seeds; the Friedman statistic by his formula from those ranks."""
    rng = np.random.default_rng(5)
    values = {
        name: {w: list(rng.normal(level + shift, 0.2, 3)) for w, shift in workloads}
        for name, level in (("a", 1.0), ("b", 0.8), ("c", 0.75), ("d", 0.3))
        for workloads in [(("w1", 0.0), ("w2", 0.1), ("w3", -0.2), ("w4", 0.05))]
    }
    result = aggregates.ranks(scores_frame(values))
    means = np.array([[np.mean(values[o][w]) for o in "abcd"] for w in ("w1", "w2", "w3", "w4")])
    by_hand = np.array([[sorted(-row).index(-v) + 1 for v in row] for row in means])
    assert result["by"] == "workload" and result["blocks"] == 4
    np.testing.assert_allclose(result["average"][list("abcd")], by_hand.mean(axis=0))
    n, k = means.shape
    r = by_hand.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)
    assert result["friedman_p"] == pytest.approx(stats.chi2.sf(chi2, k - 1))
    # fewer blocks than the workload × seed view: a larger critical difference
    by_seed = aggregates.ranks(scores_frame(values), by="workload_seed")
    assert (
        by_seed["blocks"] == 12 and result["critical_difference"] > by_seed["critical_difference"]
    )


def test_rank_stability_resamples_seeds_paired_across_optimizers():
    rng = np.random.default_rng(7)
    dominant = {  # a beats b on every seed of every workload, by a little
        "a": {w: list(0.6 + rng.normal(0, 0.05, 4)) for w in ("w1", "w2", "w3")},
    }
    dominant["b"] = {w: [s - 0.01 for s in seeds] for w, seeds in dominant["a"].items()}
    table = aggregates.rank_stability(scores_frame(dominant), resamples=300)
    assert table.set_index("optimizer")["p_best"].to_dict() == {"a": 1.0, "b": 0.0}
    # unpaired resampling would often draw b's good seeds against a's bad ones: a is best
    # on every draw only because each draw keeps the seeds' pairs
    twins = {"a": dominant["a"], "b": dominant["a"]}  # equal on every seed: ties share
    table = aggregates.rank_stability(scores_frame(twins), resamples=300)
    assert table["p_best"].tolist() == [0.5, 0.5]
    assert (table["rank_q05"] == 1.5).all() and (table["rank_q95"] == 1.5).all()


def test_rank_stability_agrees_with_a_plain_resampling_loop():
    rng = np.random.default_rng(11)
    values = {
        name: {w: list(rng.normal(level, 0.15, 5)) for w in ("w1", "w2")}
        for name, level in (("a", 0.7), ("b", 0.65), ("c", 0.4))
    }
    table = aggregates.rank_stability(scores_frame(values), resamples=4000)
    draws = np.random.default_rng(123)
    wins = dict.fromkeys("abc", 0.0)
    for _ in range(4000):
        average = np.zeros(3)
        for w in ("w1", "w2"):
            seeds = draws.integers(0, 5, 5)
            means = [np.mean(np.array(values[o][w])[seeds]) for o in "abc"]
            average += stats.rankdata(-np.array(means))
        best = np.flatnonzero(average == average.min())
        for i in best:
            wins["abc"[i]] += 1 / len(best) / 4000
    ours = table.set_index("optimizer")["p_best"]
    for name in "abc":
        assert ours[name] == pytest.approx(wins[name], abs=0.03), name


def test_every_target_belongs_to_its_workloads_protocol_as_it_is_today():
    """A preset whose protocol changed after its target was derived fails here: derive it
    again (make targets)."""
    for name in WORKLOADS:
        target = OmegaConf.load(preset_path(name)).target
        if name == "cifar10_lenet":
            assert target.test_accuracy is None  # derived where CIFAR-10 is on disk
            continue
        assert 0 < target.test_accuracy <= 1, name
        assert target.derived.reference and target.derived.seeds, name
        assert target.derived.fingerprint == compose_plan("run", f"experiment={name}").fingerprint
