"""`optbench suite track=...`: the defaults and tuned tracks, end to end on real MNIST with
debug=smoke, and checked against the runs they were computed from; the schedule-free
optimizers' own warmup in the tuned track; the track words a user may get wrong."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from constants import SMOKE
from omegaconf import OmegaConf
from scipy import stats

import optbench
from optbench.analysis import tuning
from optbench.config.schema import fingerprint, workload_fingerprint
from optbench.errors import ConfigError
from optbench.plan import OptimizerSpec
from optbench.results import store
from optbench.training import lr_schedules

from conftest import ROOT, compose_config, run_cli

WORKLOADS = "workloads=[mnist_ffnn,mnist_lenet]"
OPTIMIZERS = "optimizers=[sgd,adam,schedulefreeadamw]"
TARGET = 0.75  # reached within debug=smoke's 20 steps by some runs, not all


@pytest.fixture(scope="module")
def both(tmp_path_factory, data_dir):
    """track=both: two MNIST workloads x three optimizers x two seeds, 2 trials a tuning."""
    folder = tmp_path_factory.mktemp("tracks") / "suite"
    result = run_cli(
        "suite",
        "track=both",
        WORKLOADS,
        OPTIMIZERS,
        SMOKE,
        "seeds=2",
        "tuning.trials=2",
        f"target.test_accuracy={TARGET}",
        f"hydra.sweep.dir={folder}",
        cwd=folder.parent,
    )
    assert result.returncode == 0, result.stderr
    assert f"the two tracks side by side in {folder / 'tracks.html'}" in result.stdout
    return folder


@pytest.mark.slow
def test_both_tracks_train_as_each_track_says(both):
    for track in ("defaults", "tuned"):
        assert (both / track / "suite.html").is_file()
        assert (both / track / "friedman.csv").is_file()
    assert not list((both / "defaults").glob("*_tuning"))  # the defaults track tunes nothing
    for workload in ("mnist_ffnn", "mnist_lenet"):
        defaults = store.read_runs(both / "defaults" / workload)
        tuned = store.read_runs(both / "tuned" / workload)
        assert sorted(defaults["seed"].unique()) == sorted(tuned["seed"].unique()) == [0, 1]
        # the defaults track: each optimizer at its config file's values, one setting each
        for name, hyperparameters in defaults.groupby("optimizer")["hyperparameters"]:
            assert hyperparameters.nunique() == 1
            shipped = OmegaConf.load(ROOT / "configs" / "optimizer" / f"{name}.yaml")
            assert json.loads(hyperparameters.iloc[0])["lr"] == shipped.lr
        # the tuned track: under warmup-cosine, each optimizer's best trial of 2
        config = (both / "tuned" / workload / "config.yaml").read_text()
        assert "warmup_cosine" in config
        trials = pd.read_csv(both / "tuned" / f"{workload}_tuning" / "tuning.csv")
        assert trials.groupby("optimizer").size().to_dict() == {
            "sgd": 2,
            "adam": 2,
            "schedulefreeadamw": 2,
        }
        chosen = trials.loc[trials.groupby("optimizer")["final_validation_accuracy"].idxmax()]
        for row in chosen.itertuples():
            used = json.loads(
                tuned.loc[tuned["optimizer"] == row.optimizer].iloc[0].hyperparameters
            )
            assert used["lr"] == pytest.approx(row.lr)
        free = json.loads(
            tuned.loc[tuned["optimizer"] == "schedulefreeadamw"].iloc[0].hyperparameters
        )
        assert free["schedule"] == {"name": "constant"} and "warmup_steps" in free


@pytest.mark.slow
def test_the_tracks_report_agrees_with_each_tracks_runs(both):
    table = pd.read_csv(both / "tracks.csv").set_index("optimizer")
    accuracy = pd.read_csv(both / "tracks_accuracy.csv").set_index(["workload", "optimizer"])
    for track in ("defaults", "tuned"):
        ranks = pd.read_csv(both / track / "average_ranks.csv").set_index("optimizer")
        assert table[f"average_rank_{track}"].to_dict() == pytest.approx(
            ranks["average_rank"].to_dict()
        )
        # places by average rank, ties sharing the better place
        expected = stats.rankdata(table[f"average_rank_{track}"], method="min").astype(int)
        assert table[f"place_{track}"].tolist() == expected.tolist()
        for workload in ("mnist_ffnn", "mnist_lenet"):
            runs = store.read_runs(both / track / workload)
            last = runs[runs["step"] == runs["step"].max()]
            medians = last.groupby("optimizer")["test_accuracy"].median()
            for name, median in medians.items():
                assert accuracy.loc[(workload, name), track] == pytest.approx(median)
    assert (table["places_up"] == table["place_defaults"] - table["place_tuned"]).all()
    page = (both / "tracks.html").read_text()
    assert "defaults/suite.html" in page and "tuned/suite.html" in page
    assert (both / "tracks.png").stat().st_size > 10_000


@pytest.mark.slow
def test_friedman_csv_agrees_with_scipy(both):
    for track in ("defaults", "tuned"):
        times = pd.read_csv(both / track / "time_to_target_runs.csv")
        score = (times["final_test_accuracy"] - 0.1) / (TARGET - 0.1)
        blocks = times.assign(score=score).pivot_table(
            index="workload", columns="optimizer", values="score"
        )
        friedman = pd.read_csv(both / track / "friedman.csv").set_index("blocks_by")
        k, n = blocks.shape[1], blocks.shape[0]
        # 2 workloads: the statistic's chi-square p-value, as scipy computes it
        assert friedman.loc["workload", "friedman_p"] == pytest.approx(
            stats.friedmanchisquare(*blocks.to_numpy().T).pvalue
        )
        q = stats.studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2)
        assert friedman.loc["workload", "critical_difference"] == pytest.approx(
            q * np.sqrt(k * (k + 1) / (6 * n))
        )
        assert friedman.loc["workload_seed", "blocks"] == 2 * n


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["track=fast"], "Invalid track='fast': one of defaults, tuned, both"),
        (["track=defaults", "tuning.trials=2"], "track=defaults trains every optimizer"),
        (["track=defaults", "schedule=warmup_cosine"], "schedule=warmup_cosine has no place"),
    ],
)
def test_bad_track_words_are_refused_before_training(args, says, tmp_path, data_dir):
    result = run_cli("suite", *args, SMOKE, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_targets_take_no_track(tmp_path, data_dir):
    result = run_cli("targets", "track=tuned", SMOKE, cwd=tmp_path)
    assert result.returncode == 2
    assert "tracks are a suite's" in result.stderr


def test_a_schedule_free_trial_keeps_its_own_warmup_under_a_protocols_schedule():
    cosine = {"name": "warmup_cosine", "warmup_steps": 100, "final_lr_fraction": 0.0}
    specs = [
        OptimizerSpec.of(OmegaConf.to_container(compose_config(f"optimizer={name}").optimizer))
        for name in ("adamw", "schedulefreeadamw")
    ]
    trials, drawn = tuning.sample_trials(specs, 4, seed=0, schedule=cosine, total_steps=2500)
    for trial in trials:
        own = trial.config.get("schedule", {})
        if trial.name.startswith("schedulefreeadamw"):
            assert own == {"name": "constant"}
            assert 0 <= trial.config["warmup_steps"] <= 625
            assert lr_schedules.of_setting(cosine, trial)["name"] == "constant"
        else:
            assert set(own) == {"warmup_steps"} and 0 <= own["warmup_steps"] <= 625
            assert lr_schedules.of_setting(cosine, trial)["name"] == "warmup_cosine"
    assert lr_schedules.notes(cosine, trials) == []  # none is schedule-free under a schedule
    assert len(lr_schedules.notes(cosine, specs)) == 1  # the untuned one is
    # under a constant protocol nothing is added: committed tunings keep their settings
    constant, _ = tuning.sample_trials(specs, 2, seed=0, schedule={"name": "constant"})
    assert all("schedule" not in trial.config for trial in constant)


def test_a_workloads_target_protocol_ignores_the_tuned_tracks_schedule():
    plain = compose_config("experiment=mnist_ffnn")
    cosine = compose_config("experiment=mnist_ffnn", "schedule=warmup_cosine")
    smoke = compose_config("experiment=mnist_ffnn", SMOKE)
    assert fingerprint(cosine) != fingerprint(plain)
    assert workload_fingerprint(cosine) == workload_fingerprint(plain) == fingerprint(plain)
    assert workload_fingerprint(smoke) != fingerprint(plain)


@pytest.mark.slow
def test_loading_both_tracks_names_the_track_to_load(both):
    with pytest.raises(ConfigError, match="holds the two tracks of a suite"):
        optbench.load(both)
    assert sorted(optbench.load(both / "tuned").runs["experiment"].unique()) == [
        "mnist_ffnn",
        "mnist_lenet",
    ]
