"""Learning-rate schedules: the factors against torch.optim.lr_scheduler, applied the same in
every trainer, recorded in runs.csv, part of the protocol, and bad keys refused."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from constants import SMOKE

from optbench.analysis import tuning
from optbench.errors import ConfigError
from optbench.plan import OptimizerSpec
from optbench.training import loop, lr_schedules

from conftest import ROOT, run_plan, sweep_plan


def torch_factors(name: str, keys: dict, total: int) -> list[float]:
    """The multiple of lr at each of `total` updates, by torch.optim.lr_scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler
    if name == "step":
        scheduler = sched.StepLR(optimizer, step_size=keys["step_size"], gamma=keys["gamma"])
    else:
        warmup = keys["warmup_steps"]
        after = (
            sched.CosineAnnealingLR(
                optimizer, T_max=total - warmup, eta_min=keys["final_lr_fraction"]
            )
            if name == "warmup_cosine"
            else sched.LinearLR(
                optimizer, 1.0, keys["final_lr_fraction"], total_iters=total - warmup
            )
        )
        if warmup:
            ramp = sched.LinearLR(optimizer, 1 / warmup, 1.0, total_iters=warmup - 1)
            scheduler = sched.SequentialLR(optimizer, [ramp, after], milestones=[warmup])
        else:
            scheduler = after
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("warmup_cosine", {"warmup_steps": 5, "final_lr_fraction": 0.0}),
        ("warmup_cosine", {"warmup_steps": 0, "final_lr_fraction": 0.1}),
        ("warmup_linear", {"warmup_steps": 3, "final_lr_fraction": 0.0}),
        ("warmup_linear", {"warmup_steps": 1, "final_lr_fraction": 0.25}),
        ("step", {"step_size": 7, "gamma": 0.5}),
    ],
)
def test_factors_equal_torchs_schedulers(name, keys):
    total = 40
    ours = [lr_schedules.factor({"name": name, **keys}, t, total) for t in range(total)]
    assert ours == pytest.approx(torch_factors(name, keys, total), rel=1e-9, abs=1e-12)


def test_a_constant_schedule_is_one_everywhere_and_keeps_the_protocol():
    assert [lr_schedules.factor({"name": "constant"}, t, 10) for t in range(10)] == [1.0] * 10
    committed = (
        pd.read_csv(ROOT / "results" / "wizard_ffnn" / "runs.csv")["fingerprint"].unique().tolist()
    )
    plan = sweep_plan("experiment=wizard_ffnn")
    assert [plan.fingerprint] == committed  # as before schedules existed
    assert sweep_plan("schedule=warmup_cosine").fingerprint != plan.fingerprint


@pytest.mark.parametrize("stack_runs", ["never", "always"])
def test_every_trainer_applies_the_schedule_and_runs_csv_records_it(data_dir, stack_runs):
    """Step decay halving the lr every 10 steps: current_lr at each evaluation, and the
    same run with the lr halved by hand (a constant schedule, lr given per phase) agrees."""
    layout = ("optimizers=[sgd,adam]", "seeds=2", SMOKE, f"stack_runs={stack_runs}")
    plan = sweep_plan(*layout, "schedule=step", "schedule.step_size=10", "schedule.gamma=0.5")
    runs = loop.train(plan, progress=False)
    expected = runs["lr"] * 0.5 ** ((runs["step"] - 1) // 10)
    assert runs["current_lr"].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    constant = loop.train(sweep_plan(*layout), progress=False)
    assert (constant["current_lr"] == constant["lr"]).all()
    assert not runs["train_loss"].equals(constant["train_loss"])  # the schedule changed them


def test_a_scheduled_run_is_the_same_in_a_group_and_alone(data_dir):
    overrides = ("optimizer=adam", SMOKE, "schedule=warmup_cosine", "schedule.warmup_steps=5")
    together = loop.train(run_plan(*overrides, "seeds=3"), progress=False)
    alone = loop.train(run_plan(*overrides, "seeds=[1]"), progress=False)
    picked = together[together.seed == 1].drop(columns="wall_s").reset_index(drop=True)
    pd.testing.assert_frame_equal(picked, alone.drop(columns="wall_s"), check_exact=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule=warmup_cosine", "schedule.warmup_steps=-1"], "warmup_steps=-1"),
        (["schedule=warmup_linear", "schedule.warmup_steps=20"], "the training has 20 steps"),
        (
            ["schedule=warmup_cosine", "schedule.warmup_steps=5", "schedule.final_lr_fraction=2"],
            "=2",
        ),
        (["schedule=step", "schedule.step_size=0"], "step_size=0"),
        (["schedule=step", "schedule.gamma=0"], "gamma=0"),
    ],
)
def test_bad_schedule_keys_are_refused_up_front(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_plan(SMOKE, *overrides)


def test_a_schedule_free_optimizer_given_a_schedule_gets_a_note():
    free = OptimizerSpec.of({"name": "sf", "_target_": "pytorch_optimizer.ScheduleFreeAdamW"})
    plain = OptimizerSpec.of({"name": "adam", "_target_": "torch.optim.Adam"})
    cosine = {"name": "warmup_cosine", "warmup_steps": 5, "final_lr_fraction": 0.0}
    (note,) = lr_schedules.notes(cosine, [free, plain])
    assert "sf is schedule-free" in note
    assert lr_schedules.notes({"name": "constant"}, [free]) == []


def test_a_setting_may_hold_its_own_warmup(data_dir):
    """A tuning trial draws its warmup: its setting's `schedule` values win over the
    protocol's, for that setting only."""
    plan = sweep_plan(
        "optimizers=[sgd]", SMOKE, "schedule=warmup_linear", "schedule.warmup_steps=5"
    )
    (sgd,) = plan.optimizers
    own = OptimizerSpec.of({**sgd.config, "schedule": {"warmup_steps": 15}})
    runs = loop.train(dataclasses.replace(plan, optimizers=[sgd, own]), progress=False)
    steps = plan.steps.total_steps
    for spec, warmup in ((sgd, 5), (own, 15)):
        rows = runs[runs.hyperparameters == spec.hyperparameters]
        keys = {"name": "warmup_linear", "warmup_steps": warmup, "final_lr_fraction": 0.0}
        expected = [spec.lr * f for f in torch_factors("warmup_linear", keys, steps)]
        assert rows["current_lr"].tolist() == pytest.approx([expected[s - 1] for s in rows.step])


def test_tune_draws_the_warmup_length_with_the_lr(data_dir, tmp_path):
    optimizers = sweep_plan("optimizers=[sgd,adam]").optimizers
    cosine = {"name": "warmup_cosine", "warmup_steps": 100, "final_lr_fraction": 0.0}
    trials, drawn = tuning.sample_trials(optimizers, 6, seed=1, schedule=cosine, total_steps=3000)
    warmups = [trial.config["schedule"]["warmup_steps"] for trial in trials]
    assert all(0 <= w <= 750 for w in warmups) and len(set(warmups)) > 1
    assert drawn["warmup_steps"].tolist() == warmups
    constant, _ = tuning.sample_trials(optimizers, 6, seed=1)
    assert all("schedule" not in trial.config for trial in constant)
