"""The final table a training command ends with: its numbers against NumPy and SciPy on
the committed wizard_ffnn runs, its fit to narrow terminals, and on screen and in
optbench.log after real jobs (one seed included: no "± nan", no "[nan, nan]")."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from constants import SMOKE
from scipy import stats as scipy_stats

from optbench.analysis import stats
from optbench.report import answer
from optbench.results import store

from conftest import ROOT, run_cli

COMMITTED = ROOT / "results" / "wizard_ffnn"


@pytest.fixture(scope="module")
def committed() -> pd.DataFrame:
    return store.read_runs(COMMITTED)


def test_the_table_holds_the_final_accuracies_and_the_rankings_best(committed):
    """Independent references: NumPy's mean and std and SciPy's t-interval of the runs.csv
    rows at the last step; the committed ranking.csv's best and ties."""
    table = answer.final_table(store.summarize(committed), stats.ranking(committed)[0])
    final = committed[committed.step == committed.step.max()]
    for name, values in final.groupby("optimizer")["test_accuracy"]:
        row = table.set_index("optimizer").loc[name]
        mean, std = values.mean(), values.std(ddof=1)
        low, high = scipy_stats.t.interval(
            0.95, len(values) - 1, loc=mean, scale=scipy_stats.sem(values)
        )
        assert row["accuracy"] == f"{mean:.4f} ± {std:.4f}"
        assert row["95% CI"] == f"[{max(low, 0):.4f}, {min(high, 1):.4f}]"
        assert (row["n"], row["diverged"]) == (str(len(values)), "0")
    ranking = pd.read_csv(COMMITTED / "ranking.csv")
    assert table["optimizer"].tolist() == ranking["optimizer"].tolist()  # the best first
    expected = ["best"] + ["≈ best" if tied else "" for tied in ranking.tied_with_best[1:]]
    assert table[""].tolist() == expected


@pytest.mark.parametrize("width", [120, 60, 40, 34])
def test_the_table_fits_the_terminal_and_keeps_optimizer_and_accuracy(committed, width):
    runs = committed.assign(optimizer=committed.optimizer + " betas=[0.9, 0.999] eps=1e-08")
    table = answer.final_table(store.summarize(runs), stats.ranking(runs)[0])
    lines = answer.fitted(table, width)
    assert all(len(line) <= width for line in lines), lines
    assert lines[0].startswith("optimizer") and "accuracy" in lines[0]
    assert ("95% CI" in lines[0]) == (width >= 120)  # the first column given up
    best = lines[1]
    assert best.startswith("adadelta") and "0.9753 ± 0.0016" in best and best.endswith("best")


def test_a_sweep_ends_with_the_table_on_screen_and_in_its_log(tmp_path, data_dir):
    out = tmp_path / "out"
    done = run_cli(
        "sweep", "optimizers=[sgd,adam]", "seeds=2", SMOKE, f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(out / "summary.csv")
    final = summary[summary.step == 20].set_index("optimizer")
    ranking = pd.read_csv(out / "ranking.csv")
    log = (out / "optbench.log").read_text()
    for said in (done.stdout, log):
        table = said[said.index("Final test accuracy at step 20:") :].splitlines()
        for name in ("sgd", "adam"):
            row = next(line for line in table if line.startswith(name))
            mean, std = final.loc[name, ["test_accuracy_mean", "test_accuracy_std"]]
            assert f"{mean:.4f} ± {std:.4f}" in row
            assert row.endswith("best") == (name == ranking.optimizer[0])
    # the folder's path, the last line, on the terminal only: a log names no machine path
    assert done.stdout.rstrip().splitlines()[-1] == f"Results in {out}"
    assert "Results in" not in log


def test_one_seed_prints_n_1_without_nan_and_counts_in_the_singular(tmp_path, data_dir):
    out = tmp_path / "one"
    done = run_cli("run", "optimizer=sgd", "seeds=1", SMOKE, f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    accuracy = pd.read_csv(out / "runs.csv").query("step == 20").test_accuracy.item()
    row = next(line for line in done.stdout.splitlines() if line.startswith("sgd "))
    assert row.split() == ["sgd", f"{accuracy:.4f}", "—", "1", "0"]
    report = (out / "report.md").read_text()
    assert "1 optimizer × 1 seed (0); 2 evaluations in runs.csv" in report
    assert f"| sgd | 20 | {accuracy:.4f} | — |" in report
    assert "over 1 run (0 diverged)" in done.stdout
    pair = tmp_path / "pair"
    done = run_cli(
        "sweep", "optimizers=[sgd,adam]", "seeds=1", SMOKE, f"hydra.run.dir={pair}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    ranked = (pair / "ranking.md").read_text()
    assert "(n=1)" in ranked and "≈ best" not in ranked  # one seed: no test to tie with
    written = [out / "report.html", *pair.glob("*.md"), pair / "report.html"]
    for said in (done.stdout, report, *(path.read_text() for path in written)):
        assert not re.search(r"\bnan\b", said, re.IGNORECASE), said
