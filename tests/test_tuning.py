"""Learning-rate sensitivity and equal tuning budgets."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from optbench.analysis import stats, tuning

from conftest import compose_config, run_cli, sweep_plan


def test_expected_best_closed_form_equals_brute_force():
    values = np.array([0.91, 0.95, 0.93, 0.97])
    for k in (1, 2, 3):
        every_draw = [max(draw) for draw in itertools.product(values, repeat=k)]
        assert tuning.expected_best_exact(values, k) == pytest.approx(np.mean(every_draw))
    assert tuning.expected_best_exact(values, 1) == pytest.approx(values.mean())


def test_resampled_expected_best_matches_the_closed_form():
    values = np.random.default_rng(1).uniform(0.9, 0.98, 12)
    rng = np.random.default_rng(0)
    for k in (1, 3, 12):
        best = tuning.expected_best(values, k, rng)
        standard_error = best["std"] / np.sqrt(stats.RESAMPLES)
        assert (
            abs(best["expected_best"] - tuning.expected_best_exact(values, k)) < 5 * standard_error
        )
        assert values.min() <= best["q10"] <= best["q90"] <= values.max()


def test_trials_are_reproducible_and_inside_the_search_space():
    optimizers = sweep_plan("optimizers=[sgd,momentum,adam]").optimizers
    configs, drawn = tuning.sample_trials(optimizers, trials=5, seed=3)
    again, _ = tuning.sample_trials(optimizers, trials=5, seed=3)
    assert [c.lr for c in configs] == [c.lr for c in again]
    assert len(configs) == 15 and drawn.groupby("optimizer").size().tolist() == [5, 5, 5]
    for config, row in zip(configs, drawn.itertuples(), strict=True):
        base = next(o for o in optimizers if o.name == row.optimizer)
        assert base.lr / 100 <= config.lr <= base.lr * 100
    sgd = drawn[drawn.optimizer == "sgd"]
    assert sgd["momentum"].isna().all()  # plain SGD stays plain: its momentum is 0
    assert drawn[drawn.optimizer == "momentum"]["momentum"].between(0, 0.99).all()
    adam = [c for c in configs if c.name.startswith("adam")]
    betas = [c.config["betas"] for c in adam]
    assert all(0.8 <= b1 <= 0.99 and 0.9 <= b2 <= 0.9999 for b1, b2 in betas)
    assert all(1e-5 <= c.config["weight_decay"] <= 0.1 for c in configs)  # all three take one


def test_learning_rate_free_and_schedule_free_optimizers_search_their_own_knobs():
    optimizers = sweep_plan("optimizers=[prodigy,schedulefreeadamw]").optimizers
    configs, drawn = tuning.sample_trials(optimizers, trials=6, seed=1, total_steps=400)
    for config in configs:
        base = next(o for o in optimizers if config.name.startswith(o.name))
        span = 10 if base.name == "prodigy" else 100  # prodigy's lr multiplies its own step
        assert base.lr / span <= config.lr <= base.lr * span
    free = [c for c in configs if c.name.startswith("schedulefreeadamw")]
    assert all(0 <= c.config["warmup_steps"] <= 100 for c in free)
    assert len({c.config["warmup_steps"] for c in free}) > 1
    assert drawn[drawn.optimizer == "prodigy"]["own_warmup_steps"].isna().all()


def test_a_better_optimizer_has_the_higher_curve():
    drawn = pd.DataFrame(
        [
            {"optimizer": o, "trial": t, "name": f"{o} trial {t}"}
            for o in ("good", "bad")
            for t in range(6)
        ]
    )
    accuracy = {f"good trial {t}": 0.95 + 0.003 * t for t in range(6)}
    accuracy |= {f"bad trial {t}": 0.90 + 0.003 * t for t in range(6)}
    runs = pd.DataFrame(
        [
            {
                "optimizer": name,
                "seed": 0,
                "step": 10,
                "validation_accuracy": value,
                "test_accuracy": 1.9 - value,  # the reverse order: it must not matter
                "diverged": False,
            }
            for name, value in accuracy.items()
        ]
    )
    trials, curve = tuning.tuning_tables(runs, drawn)
    wide = curve.pivot(index="trials", columns="optimizer", values="expected_best")
    assert (wide["good"] > wide["bad"]).all()
    assert wide["good"].is_monotonic_increasing
    assert wide.loc[6, "good"] <= 0.965 + 1e-12  # never above the best trial


def test_lr_grid_multiplies_each_optimizers_lr():
    expanded = sweep_plan("optimizers=[sgd,adam]", "lr_grid=[0.1,1,10]").optimizers
    assert [(o.name, round(o.lr, 12)) for o in expanded] == [
        ("sgd", 0.01),
        ("sgd", 0.1),
        ("sgd", 1.0),
        ("adam", 0.0001),
        ("adam", 0.001),
        ("adam", 0.01),
    ]
    assert compose_config("lr_grid=[0.5,2]").lr_grid == [0.5, 2.0]


@pytest.mark.slow
def test_lr_grid_sweep_and_tune_end_to_end(data_dir, tmp_path):
    small = ["dataset.train_size=1000", "train.steps=30", "train.eval_every=30", "seeds=2"]
    out = tmp_path / "grid"
    result = run_cli(
        "sweep",
        "optimizers=[sgd,adam]",
        "lr_grid=[0.1,1,10]",
        *small,
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs[runs.optimizer == "adam"]["lr"].round(10).unique()) == [1e-4, 1e-3, 1e-2]
    assert (out / "lr_sensitivity.png").stat().st_size > 10_000
    summary = pd.read_csv(out / "summary.csv")
    assert "adam lr=0.001" in set(summary.optimizer) and (summary.n == 2).all()
    out = tmp_path / "tune"
    result = run_cli(
        "tune",
        "optimizers=[sgd,adam]",
        "tuning.trials=4",
        *small,
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(out / "tuning.csv")
    assert trials.groupby("optimizer").size().to_dict() == {"adam": 4, "sgd": 4}
    assert trials["final_test_accuracy"].between(0, 1).all()
    assert trials["final_validation_accuracy"].between(0, 1).all()
    # the protocol held out no validation set: the trials held out one of their own
    assert OmegaConf.load(out / "config.yaml").dataset.validation_size == 10_000
    curve = pd.read_csv(out / "tuning_curve.csv")
    assert sorted(curve.trials.unique()) == [1, 2, 3, 4]
    report = (out / "report.md").read_text()
    assert "tuning.png" in report
    assert "2 optimizers × 4 trials × 2 seeds (0, 1)" in report  # not "8 optimizers"
    # on screen: each optimizer's best trial, the better of the two marked
    table = result.stdout[result.stdout.index("Final test accuracy at step 30:") :]
    rows = [line for line in table.splitlines() if " trial " in line]
    assert sorted(row.split(" trial ")[0] for row in rows) == ["adam", "sgd"]
    assert [row.endswith("best") for row in rows] == [True, False]


def test_a_workload_is_tuned_first_only_where_its_plan_has_trials():
    """A suite's workload is tuned first where tuning.trials=K is given: its plan says so
    (trials K), and without it the plan has no trials; `optbench tune` keeps its default."""
    from optbench.compose.jobs import compose_plan

    workload = ["experiment=mnist_ffnn", "optimizers=[sgd,adam]", "debug=smoke"]
    assert compose_plan("suite", *workload).tuning["trials"] is None
    assert compose_plan("suite", *workload, "tuning.trials=3").tuning["trials"] == 3
    assert compose_plan("tune", *workload).tuning["trials"] == 16
