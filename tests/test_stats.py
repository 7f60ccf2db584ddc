"""Statistics against SciPy/NumPy and hand computations; the ranking on cases whose answer
is known."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from optbench.analysis import stats
from optbench.report import ranking
from optbench.results import store


def test_t_interval_equals_scipys():
    values = np.array([0.955, 0.957, 0.959, 0.956, 0.951])
    expected = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values)
    )
    assert stats.t_interval(values) == pytest.approx(expected, rel=1e-12)
    assert all(np.isnan(stats.t_interval(np.array([0.9]))))


def test_an_accuracy_interval_is_clipped_to_0_and_1_as_scipys_clipped(tmp_path):
    """Near a bound, few seeds spill the t-interval over it (SciPy's too); the summary and
    the ranking give SciPy's interval clipped to [0, 1] for the accuracy, to [0, ∞) for the
    loss."""
    near_zero, near_one = [0.098, 0.084, 0.0, 0.31], [0.99, 1.0, 0.93, 1.0]
    runs = runs_from({"low": near_zero, "high": near_one})
    runs.loc[runs.optimizer == "low", "test_loss"] = [0.5, 0.1, 9.0, 0.2]
    store.write_results(tmp_path, runs)
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("optimizer")
    table = stats.ranking(runs)[0].set_index("optimizer")
    for name, metric, (floor, ceiling) in [
        ("low", "test_accuracy", (0, 1)),
        ("high", "test_accuracy", (0, 1)),
        ("low", "test_loss", (0, np.inf)),
    ]:
        values = runs[runs.optimizer == name][metric].to_numpy()
        scipys = scipy_stats.t.interval(
            0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values)
        )
        assert scipys[0] < floor or scipys[1] > ceiling  # the unclipped one spills over
        expected = (max(scipys[0], floor), min(scipys[1], ceiling))
        row = summary.loc[name]
        assert (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx(expected)
        if metric == "test_accuracy":
            ranked = table.loc[name]
            assert (ranked.ci_low, ranked.ci_high) == pytest.approx(expected)


def test_differences_equal_but_for_rounding_give_scipys_p_without_a_warning():
    a = np.array([0.5, 0.6])
    b = a - 0.1  # differences 0.1 and 0.09999999999999998
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t_p, _ = stats.paired_tests(a, b)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        expected = scipy_stats.ttest_rel(a, b).pvalue
    assert seen  # SciPy itself warns here
    assert t_p == expected


def test_wilcoxon_ties_are_exact_as_counts_of_correct_answers():
    """Accuracies over N = 10,000 test examples: the differences are counts over N. Float
    subtraction gives equal counts different last bits (0.9010 - 0.9000 != 0.9007 - 0.8997),
    which would rank genuine ties apart; the p-value equals SciPy's on the integer counts."""
    n_test = 10_000
    a = np.array([0.9010, 0.8997, 0.9128, 0.9700, 0.9650, 0.9259, 0.9610, 0.9410])
    b = np.array([0.9000, 0.9007, 0.9118, 0.9700, 0.9655, 0.9249, 0.9590, 0.9420])
    differences = a - b
    tied = [0, 1, 2, 5, 7]  # 10 more or fewer correct answers out of 10,000
    assert len(set(np.abs(differences[tied]))) > 1  # the floats break the tie
    counts = np.round(a * n_test).astype(int) - np.round(b * n_test).astype(int)
    assert len(set(np.abs(counts[tied]))) == 1 and counts[3] == 0  # one tie, one zero
    expected = scipy_stats.wilcoxon(counts, zero_method="zsplit").pvalue
    assert stats.paired_tests(a, b)[1] == pytest.approx(expected, rel=1e-12)
    by_floats = scipy_stats.wilcoxon(differences, zero_method="zsplit").pvalue
    assert by_floats != pytest.approx(expected, rel=1e-6)  # the broken tie mattered


def test_describe_equals_numpy_percentiles():
    values = pd.Series([0.3, 0.1, 0.4, 0.15, 0.9, 0.2])
    described = stats.describe(values)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    assert (described["q25"], described["median"], described["q75"]) == pytest.approx(
        (q25, median, q75)
    )
    assert described["iqr"] == pytest.approx(scipy_stats.iqr(values))


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 -> max(0.06, 0.04)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.02, 0.9]) == pytest.approx([0.04, 0.9])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, then monotone


def runs_from(finals: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "experiment": "e",
                "dataset": "mnist",
                "model": "ffnn",
                "optimizer": name,
                "lr": 0.1,
                "hyperparameters": '{"lr":0.1}',
                "seed": seed,
                "step": 100,
                "epoch": 1.0,
                "current_lr": 0.1,
                "train_loss": 0.1,
                "last_batch_loss": 0.1,
                "test_loss": 0.1,
                "test_accuracy": value,
                "grad_evals": 100,
                "wall_s": 1.0,
                "diverged": False,
                "fingerprint": "0123456789ab",
            }
            for name, values in finals.items()
            for seed, value in enumerate(values)
        ]
    )


def test_a_clearly_better_optimizer_is_detected():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.01, 8)  # shared by both: what pairing by seed removes
    worse = 0.95 + seed_effect
    better = worse + 0.004 + rng.normal(0, 0.0005, 8)
    table, pairs = stats.ranking(runs_from({"worse": list(worse), "better": list(better)}))
    assert table["optimizer"].tolist() == ["better", "worse"]
    assert table["tied_with_best"].tolist() == [True, False]
    expected_p = scipy_stats.ttest_rel(better, worse).pvalue
    assert pairs["t_p"].item() == pytest.approx(expected_p) and pairs["significant"].item()
    # The means' intervals overlap: only the paired test sees the difference.
    assert table["ci_low"].iloc[0] < table["ci_high"].iloc[1]


def test_identical_runs_are_indistinguishable():
    same = [0.97, 0.971, 0.969, 0.972, 0.968]
    table, pairs = stats.ranking(runs_from({"a": same, "b": same, "c": same}))
    assert table["tied_with_best"].all()
    assert (pairs["t_p"] == 1).all() and not pairs["significant"].any()


def test_summary_csv_intervals_and_quartiles_equal_scipy_and_numpy(tmp_path):
    runs = runs_from({"a": [0.90, 0.93, 0.91, 0.95], "b": [0.5, 0.7, 0.6, 0.65]})
    store.write_results(tmp_path, runs)
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("optimizer")
    for name, values in runs.groupby("optimizer")["test_accuracy"]:
        values = values.to_numpy()
        low, high = scipy_stats.t.interval(
            0.95, 3, loc=values.mean(), scale=scipy_stats.sem(values)
        )
        row = summary.loc[name]
        assert (row.test_accuracy_ci_low, row.test_accuracy_ci_high) == pytest.approx((low, high))
        assert row.test_accuracy_median == pytest.approx(np.median(values))
        assert row.test_accuracy_iqr == pytest.approx(scipy_stats.iqr(values))


def test_ranking_files(tmp_path):
    runs = runs_from({"a": [0.90, 0.93, 0.91], "b": [0.5, 0.7, 0.6]})
    written = ranking.write_ranking(tmp_path, runs)
    assert sorted(p.name for p in written) == ["ranking.csv", "ranking.md", "ranking_pairs.csv"]
    assert "| 1 | a |" in (tmp_path / "ranking.md").read_text()
    assert ranking.write_ranking(tmp_path / "one", runs[runs.optimizer == "a"]) == []


def test_the_html_report_is_self_contained(tmp_path):
    runs = runs_from({"a": [0.90, 0.93, 0.91], "b": [0.5, 0.7, 0.6]})
    store.write_results(tmp_path, runs)
    from optbench.report import plots, report

    plots.plot_all(tmp_path)
    md_path, html_path = report.write_report(tmp_path)
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 4  # every plot embedded
    assert "src='http" not in page and "href=" not in page  # nothing to fetch
    assert "<table" in page and "0.9133" in page  # a's mean final accuracy
    text = md_path.read_text()
    assert "![" in text and "| 1 | a |" in text


def test_final_rows_are_each_optimizers_last_step_and_last_step_rows_the_last_of_all():
    runs = pd.concat(
        [
            runs_from({"a": [0.1, 0.2], "b": [0.3, 0.4]}).assign(step=50),
            runs_from({"a": [0.5, 0.6], "b": [0.7, 0.8]}),  # step 100
        ],
        ignore_index=True,
    )
    runs = runs[~((runs.optimizer == "b") & (runs.step == 100))]  # b stopped at step 50
    final = stats.final_rows(runs)
    assert sorted(zip(final.optimizer, final.step, final.test_accuracy, strict=True)) == [
        ("a", 100, 0.5),
        ("a", 100, 0.6),
        ("b", 50, 0.3),
        ("b", 50, 0.4),
    ]
    last = stats.last_step_rows(runs)
    assert list(last.optimizer) == ["a", "a"] and set(last.step) == {100}


def test_the_analysis_of_runs_in_memory_writes_what_the_files_give(tmp_path):
    """After training, a job passes its runs, summary and ranking on in memory; `optbench
    compare` and `plot` read them from the files. Both give the same files, byte for byte."""
    from optbench.benchmark import write_analysis
    from optbench.report import plots, report

    runs = runs_from({"a": [0.90, 0.93, 0.91], "b": [0.5, 0.7, 0.6]})
    runs = runs.sample(frac=1, random_state=0)  # rows in another order than runs.csv's
    in_memory, from_files = tmp_path / "memory", tmp_path / "files"
    summary = store.write_results(in_memory, runs)
    store.write_results(from_files, runs)
    written = write_analysis(in_memory, runs, summary=summary)
    ranking.write_ranking(from_files, store.read_runs(from_files))
    plots.plot_all(from_files)
    report.write_report(from_files)
    names = sorted(p.name for p in in_memory.iterdir())
    assert names == sorted(p.name for p in from_files.iterdir())
    assert {p.name for p in written} == set(names) - {"runs.csv", "summary.csv"}
    for name in names:
        assert (in_memory / name).read_bytes() == (from_files / name).read_bytes(), name
