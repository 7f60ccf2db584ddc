"""Learning-rate schedules: the factors against torch.optim.lr_scheduler, applied the same in
every trainer, recorded in runs.csv, part of the protocol, and bad keys refused."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from constants import SMOKE, WIZARD_FFNN_FINGERPRINT

from optbench import models
from optbench.analysis import tuning
from optbench.data import in_memory
from optbench.errors import ConfigError
from optbench.plan import OptimizerSpec
from optbench.training import loop, lr_schedules
from optbench.training.trainers import stream_seed

from conftest import run_plan, sweep_plan


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
    plan = sweep_plan("experiment=wizard_ffnn", "schedule=constant")
    assert plan.fingerprint == WIZARD_FFNN_FINGERPRINT  # as before schedules existed
    assert sweep_plan("schedule=warmup_cosine").fingerprint != plan.fingerprint


def by_hand(plan, spec, seed: int, tensors, factor) -> list[dict]:
    """The run trained by hand: the model's initial weights and the mini-batches of the
    seed drawn as the engine draws them, autograd, and torch.optim's own SGD or Adam with
    its lr set to spec.lr * factor(step) before each step; its losses and accuracy at
    every evaluation step."""
    model = models.build_model(plan.model, plan.dataset, stream_seed(seed, "init"))
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[spec.name](
        model.parameters(), lr=spec.lr
    )
    order = torch.Generator().manual_seed(stream_seed(seed, "data_order"))
    step_plan, batches, losses, rows = plan.steps, [], [], []
    for step in range(1, step_plan.total_steps + 1):
        if not batches:
            n = len(tensors.train_x)
            batches = list(torch.randperm(n, generator=order).split(step_plan.batch_size))
        index = batches.pop(0)
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * factor(step)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tensors.train_x[index]), tensors.train_y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step in step_plan.eval_steps:
            with torch.no_grad():
                out = model(tensors.test_x)
            rows.append(
                {
                    "train_loss": sum(losses) / len(losses),
                    "last_batch_loss": losses[-1],
                    "test_loss": F.cross_entropy(out, tensors.test_y).item(),
                    "test_accuracy": (out.argmax(1) == tensors.test_y).float().mean().item(),
                }
            )
            losses = []
    return rows


@pytest.mark.parametrize("stack_runs", ["never", "always"])
def test_every_trainer_applies_the_schedule_and_runs_csv_records_it(data_dir, stack_runs):
    """Step decay halving the lr every 10 steps: current_lr at each evaluation, and every
    run's losses and accuracy equal those of torch.optim stepped by hand at the halved lr
    (the weights after the halved steps decide the second evaluation's)."""
    layout = ("optimizers=[sgd,adam]", "seeds=2", SMOKE, f"stack_runs={stack_runs}")
    plan = sweep_plan(*layout, "schedule=step", "schedule.step_size=10", "schedule.gamma=0.5")
    assert plan.steps.eval_steps == [10, 20]  # one evaluation before the halving
    runs = loop.train(plan, progress=False)

    def halved(step: int) -> float:
        return 0.5 ** ((step - 1) // 10)

    expected = runs["lr"] * runs["step"].map(halved)
    assert runs["current_lr"].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    tensors = in_memory.load(plan.dataset, plan.data_dir, torch.device("cpu"))

    for spec in plan.optimizers:
        for seed in plan.seeds:
            ours = runs[(runs.optimizer == spec.name) & (runs.seed == seed)]
            hand = by_hand(plan, spec, seed, tensors, halved)
            for row, reference in zip(ours.to_dict("records"), hand, strict=True):
                where = (spec.name, seed, row["step"])
                for metric, value in reference.items():
                    assert row[metric] == pytest.approx(value, rel=1e-5, abs=1e-6), where


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
