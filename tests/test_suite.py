"""`optbench suite` and `optbench targets` end to end, on real MNIST with debug=smoke: every
file of a suite, time-to-target recomputed from each workload's runs.csv, a suite resumed,
tuned, launched through Hydra's joblib launcher, and one where nobody reaches a target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from constants import SMOKE

from optbench.workloads import WORKLOADS, preset_path

from conftest import run_cli

pytestmark = pytest.mark.slow

SMALL = ("workloads=[mnist_ffnn,mnist_lenet]", "optimizers=[sgd,adam,schedulefreeadamw]", SMOKE)
TARGET = 0.75  # reached within debug=smoke's 20 steps by some runs, not all
SUITE_FILES = [
    "workloads.csv",
    "time_to_target_runs.csv",
    "time_to_target.csv",
    "performance_ratios.csv",
    "profile_scores.csv",
    "performance_profile_steps.png",
    "performance_profile_grad_evals.png",
    "performance_profile_seconds.png",
    "iqm.csv",
    "iqm.png",
    "probability_of_improvement.csv",
    "probability_of_improvement.png",
    "average_ranks.csv",
    "nemenyi.csv",
    "critical_difference.png",
    "critical_difference_workload_seed.png",
    "rank_stability.csv",
    "rank_stability.png",
    "suite.md",
    "suite.html",
]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, data_dir) -> Path:
    """A smoke suite: two MNIST workloads x three optimizers x two seeds."""
    folder = tmp_path_factory.mktemp("suite") / "suite"
    result = run_cli(
        "suite",
        *SMALL,
        "seeds=2",
        f"target.test_accuracy={TARGET}",
        f"hydra.sweep.dir={folder}",
        cwd=folder.parent,
    )
    assert result.returncode == 0, result.stderr
    assert f"suite results in {folder / 'suite.md'}" not in result.stdout  # the html is named
    assert "suite.html" in result.stdout
    return folder


def test_a_suite_writes_every_file_and_one_folder_per_workload(suite_dir):
    for name in SUITE_FILES:
        assert (suite_dir / name).is_file(), name
    for workload in ("mnist_ffnn", "mnist_lenet"):
        assert (suite_dir / workload / "runs.csv").is_file()
        assert (suite_dir / workload / "report.html").is_file()
    workloads = pd.read_csv(suite_dir / "workloads.csv")
    assert workloads["workload"].tolist() == ["mnist_ffnn", "mnist_lenet"]
    assert (workloads["status"] == "ran").all() and (workloads["target"] == TARGET).all()
    times = pd.read_csv(suite_dir / "time_to_target_runs.csv")
    assert len(times) == 2 * 3 * 2
    page = (suite_dir / "suite.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    links = re.findall(r"href='([^']*)'", page)
    assert links == ["mnist_ffnn/report.html", "mnist_lenet/report.html"]
    # Hydra's record of the multirun names no folder of the machine that ran it
    multirun = (suite_dir / "multirun.yaml").read_text()
    assert "hydra:" in multirun and "cwd:" not in multirun
    assert all((suite_dir / link).is_file() for link in links)


def test_time_to_target_agrees_with_each_workloads_runs(suite_dir):
    times = pd.read_csv(suite_dir / "time_to_target_runs.csv")
    for row in times.itertuples():
        runs = pd.read_csv(suite_dir / row.workload / "runs.csv")
        run = runs[(runs.optimizer == row.optimizer) & (runs.seed == row.seed)].sort_values("step")
        # the workloads hold out a validation set: the target is reached on it
        first = next((r for r in run.itertuples() if r.validation_accuracy >= TARGET), None)
        if first is None:
            assert not row.reached and row.steps == float("inf")
        else:
            assert row.reached and row.steps == first.step and row.seconds == first.wall_s
            assert row.grad_evals == first.grad_evals and row.epochs == first.epoch
    per_optimizer = pd.read_csv(suite_dir / "time_to_target.csv")
    counts = times.groupby(["workload", "optimizer"])["reached"].sum()
    for row in per_optimizer.itertuples():
        assert row.reached == counts[row.workload, row.optimizer]
    assert 0 < times["reached"].mean() < 1  # some runs reach the target, some do not


def test_the_same_suite_again_trains_nothing_and_rewrites_the_same_tables(suite_dir):
    before = {
        name: (suite_dir / name).read_bytes() for name in SUITE_FILES if name.endswith(".csv")
    }
    result = run_cli(
        "suite",
        *SMALL,
        "seeds=2",
        f"target.test_accuracy={TARGET}",
        f"hydra.sweep.dir={suite_dir}",
        cwd=suite_dir.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already complete") + result.stderr.count("already complete") == 2
    for name, content in before.items():
        assert (suite_dir / name).read_bytes() == content, name


def test_hydras_joblib_launcher_runs_the_workloads_with_the_same_numbers(suite_dir, tmp_path):
    folder = tmp_path / "parallel"
    result = run_cli(
        "suite",
        "workloads=[mnist_ffnn,mnist_lenet]",
        "optimizers=[sgd,adam]",
        "seeds=[1]",
        SMOKE,
        f"target.test_accuracy={TARGET}",
        "hydra/launcher=joblib",
        f"hydra.sweep.dir={folder}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for workload in ("mnist_ffnn", "mnist_lenet"):
        ours = pd.read_csv(folder / workload / "runs.csv")
        theirs = pd.read_csv(suite_dir / workload / "runs.csv")
        theirs = theirs[theirs.optimizer.isin(["sgd", "adam"]) & (theirs.seed == 1)]
        columns = ["optimizer", "step", "test_accuracy", "train_loss"]
        pd.testing.assert_frame_equal(
            ours[columns].reset_index(drop=True), theirs[columns].reset_index(drop=True)
        )
    assert (folder / "suite.html").is_file()


def test_a_suite_where_nobody_reaches_a_target_still_writes_every_file(tmp_path, data_dir):
    folder = tmp_path / "unreached"
    result = run_cli(
        "suite",
        "workloads=[mnist_ffnn]",
        "optimizers=[sgd,adam,lion]",
        "seeds=2",
        SMOKE,
        "target.test_accuracy=0.999",
        f"hydra.sweep.dir={folder}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "mnist_ffnn: no run of any optimizer reached the target" in result.stdout
    by_workloads = {"nemenyi.csv", "critical_difference.png"}  # one workload: no test
    for name in SUITE_FILES:
        assert (folder / name).is_file() == (name not in by_workloads), name
    scores = pd.read_csv(folder / "profile_scores.csv")
    assert (scores["profile_score"] == 0).all()
    report = (folder / "suite.md").read_text()
    assert "Targets nobody reached" in report
    assert "The Friedman test needs at least 2 workloads and 3 optimizers" in report


def test_a_tuned_suite_trains_every_seed_with_each_optimizers_best_trial(tmp_path, data_dir):
    folder = tmp_path / "tuned"
    result = run_cli(
        "suite",
        "workloads=[mnist_ffnn]",
        "optimizers=[sgd,adam]",
        "seeds=2",
        "tuning.trials=3",
        SMOKE,
        f"target.test_accuracy={TARGET}",
        f"hydra.sweep.dir={folder}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(folder / "mnist_ffnn_tuning" / "tuning.csv")
    runs = pd.read_csv(folder / "mnist_ffnn" / "runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1] and sorted(runs["optimizer"].unique()) == [
        "adam",
        "sgd",
    ]
    for name in ("sgd", "adam"):
        mine = trials[trials.optimizer == name]
        best = mine.loc[mine["final_validation_accuracy"].idxmax()]  # the first of equal ones
        lr = json.loads(runs[runs.optimizer == name]["hyperparameters"].iloc[0])["lr"]
        assert lr == pytest.approx(best["lr"])


def test_targets_from_another_protocol_stay_out_of_the_presets(tmp_path, data_dir):
    presets = {name: preset_path(name).read_bytes() for name in WORKLOADS}
    folder = tmp_path / "targets"
    result = run_cli(
        "targets",
        "workloads=[mnist_ffnn]",
        "optimizers=[sgd,adam]",
        "seeds=2",
        SMOKE,
        f"hydra.sweep.dir={folder}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "not written into the presets, as debug=smoke changes" in result.stdout
    assert {name: preset_path(name).read_bytes() for name in WORKLOADS} == presets
    derived = pd.read_csv(folder / "targets.csv").iloc[0]
    runs = pd.read_csv(folder / "mnist_ffnn" / "runs.csv")
    # the workload holds out a validation set: the target is set on it, never on the test set
    per_run = runs.groupby(["optimizer", "seed"])["validation_accuracy"].max()
    best = per_run.groupby("optimizer").median()
    assert derived["target"] == pytest.approx(best.max(), abs=1e-4)
    assert derived["adam"] == pytest.approx(best["adam"])
