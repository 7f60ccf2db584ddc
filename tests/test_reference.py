"""Every layout of the engine against the reference training loop (training/reference.py):
a lone run, the runs of an optimizer group on one and two threads, stacked runs, a run
resumed from a checkpoint mid-training, a diverging run. Each gives every run the rows and
the final weights the reference gives it, to float rounding; the layouts agree with one
another bit for bit (here, and in tests/test_engine.py's layout tests).

Tolerances. The engine and the reference take the same steps in the same order; only some
kernels differ: the engine's written-out ffnn pass (models.ffnn_loss_and_grads) and the
fused or foreach optimizer kernels of a group against autograd and an optimizer's default
kernel, and a stack's batched matmuls against a lone run's. Each differs by float32's
rounding, about 1e-7 relative in a step's gradient; over the 20 steps of debug=smoke that
grows to about 1e-6 (an L-BFGS line search, which compares losses, the most). So:
- losses (train_loss, last_batch_loss, test_loss) and the final weights (as the norm of the
  difference over the norm) within RTOL = 1e-5, ten times what most runs show, and more
  where an update amplifies a gradient's rounding (RTOL_OF: below);
- test_accuracy within one test example (a rounding may flip one prediction: a step of
  1/n_test that no relative tolerance allows for);
- every other column exactly: which run, step, epoch, grad_evals, current_lr, diverged
  (wall_s left out: a time).
The tolerance is tight enough to fail: an lr schedule one step late breaks it.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from constants import SMOKE

from optbench.plan import OptimizerSpec, Plan
from optbench.training import checkpoints, loop, reference, workers

from conftest import ROOT, run_plan, sweep_plan

LOSSES = ["train_loss", "last_batch_loss", "test_loss"]
RTOL = 1e-5
# L-BFGS's curvature pairs are differences of two gradients, which keep the gradients'
# rounding but not their size; AdaHessian divides by its estimate of the Hessian's
# diagonal. Over 20 steps their weights come out up to 3e-4 and 8e-6 apart.
RTOL_OF = {"lbfgs": 1e-3, "adahessian": 1e-4}

# L-BFGS, which calls the closure twice a step. Without a line search: a strong-Wolfe
# search branches on comparisons of losses, where a rounding can take the other branch and
# the run another path (seed 1 of this job: 1% apart after 10 steps).
LBFGS = ("optimizer=lbfgs", "optimizer.max_iter=2", "optimizer.lr=0.1")


def with_keys(spec: OptimizerSpec, **keys) -> OptimizerSpec:
    """An optimizer setting with some keys set (as optimizer.KEY=... would)."""
    return OptimizerSpec.of({**spec.config, **keys})


def engine(plan: Plan, checkpoint: Path) -> pd.DataFrame:
    """The engine's rows of the plan; its whole state saved at checkpoint."""
    return loop.train(plan, progress=False, checkpoint=checkpoint)


def final_weights(plan: Plan, checkpoint: Path) -> dict:
    """Each run's final weights (name -> tensor), from the engine's last checkpoint: one
    process's, or each worker process's part of it (the runs dealt as workers.deal does)."""
    saved = checkpoints.load(checkpoint)
    if "parts" in saved:
        parts = workers.deal(plan.runs, len(saved["parts"]))
        assert saved["job"]["parts"] == [[run.key for run in part] for part in parts]
        states = zip(parts, saved["parts"], strict=True)
    else:
        states = [(plan.runs, saved)]
    weights = {}
    for runs, state in states:
        weights |= trainers_weights(plan, runs, state["trainers"])
    return weights


def trainers_weights(plan: Plan, runs: list, saved: list) -> dict:
    """Each run's weights in the saved states of the trainers of these runs."""
    built, _ = loop.build_trainers(plan, runs, torch.device(plan.device))
    weights = {}
    for trainer, state in zip(built, saved, strict=True):
        for r, run in enumerate(trainer.runs):
            if "model" in state:  # a RunTrainer: its model's state_dict
                weights[run] = dict(state["model"])
            else:  # a StackTrainer: every parameter [R, ...], this run's row of it
                weights[run] = {name: p[r] for name, p in state["params"].items()}
    return weights


def assert_follows_reference(plan: Plan, rows: pd.DataFrame, weights: dict) -> None:
    """Every run of the plan: the engine's rows and final weights are the reference's, to
    the tolerances of this module's docstring."""
    n_test = plan.dataset["test_size"] or 10_000
    for run in plan.runs:
        rtol = RTOL_OF.get(run.optimizer.name, RTOL)
        expected, model = reference.train_one_run(plan, run)
        expected = pd.DataFrame(expected)
        spec = run.optimizer
        mine = (rows.optimizer == spec.name) & (rows.hyperparameters == spec.hyperparameters)
        got = rows[mine & (rows.seed == run.seed)].reset_index(drop=True)
        assert list(got.columns) == list(expected.columns)
        exact = [c for c in got.columns if c not in [*LOSSES, "test_accuracy", "wall_s"]]
        pd.testing.assert_frame_equal(got[exact], expected[exact], check_exact=True, obj=run)
        for column in LOSSES:
            torch.testing.assert_close(
                torch.tensor(got[column].to_numpy()),
                torch.tensor(expected[column].to_numpy()),
                rtol=rtol,
                atol=0,
                equal_nan=True,
                msg=lambda text, run=run, column=column: f"{run}, {column}: {text}",
            )
        examples = (got["test_accuracy"] - expected["test_accuracy"]).abs() * n_test
        assert examples.fillna(0).round().max() <= 1, (run, examples)  # NaN: both diverged
        if expected["diverged"].any():  # its weights blew up, or stopped where they did
            continue
        for name, parameter in model.named_parameters():
            theirs, ours = parameter.detach(), weights[run][name].cpu()
            relative = torch.linalg.vector_norm(ours - theirs) / torch.linalg.vector_norm(theirs)
            assert relative <= rtol, (run, name, relative)


@pytest.mark.parametrize(
    "schedule",
    [("schedule=constant",), ("schedule=step", "schedule.step_size=10", "schedule.gamma=0.5")],
    ids=["constant", "step"],
)
def test_a_lone_sgd_run_follows_the_reference_on_every_device(data_dir, device, schedule, tmp_path):
    """SGD alone (an optimizer group of one), with and without a step decay of its lr."""
    plan = run_plan(device, "optimizer=sgd", "seeds=[7]", SMOKE, *schedule)
    rows = engine(plan, tmp_path / "checkpoint.pt")
    assert_follows_reference(plan, rows, final_weights(plan, tmp_path / "checkpoint.pt"))


@pytest.mark.parametrize(
    "choice",
    [
        ("optimizer=sgd", "optimizer.elementwise=false", "schedule=step", "schedule.step_size=7"),
        ("optimizer=adam",),
        LBFGS,
        ("optimizer=adahessian", "optimizer.lr=0.01"),
    ],
    ids=["sgd-own-optimizer", "adam", "lbfgs", "adahessian"],
)
def test_a_lone_run_follows_the_reference(data_dir, choice, tmp_path):
    """A RunTrainer with its own optimizer (SGD declared not element-wise, L-BFGS, which
    evaluates the loss itself through the closure, AdaHessian, which draws Hutchinson
    probes every step and differentiates the gradient again), and Adam alone in its
    group (fused kernel)."""
    plan = run_plan(*choice, "seeds=[2]", SMOKE)
    rows = engine(plan, tmp_path / "checkpoint.pt")
    assert_follows_reference(plan, rows, final_weights(plan, tmp_path / "checkpoint.pt"))


@pytest.mark.slow
def test_grouped_runs_follow_the_reference_on_one_thread_and_two_processes(data_dir, tmp_path):
    """Three seeds of SGD and of Adam, each optimizer's runs stepped by one optimizer call
    (OptimizerGroup): on one thread and in two worker processes, bit for bit the same, and
    each run the reference's."""
    layout = ("optimizers=[sgd,adam]", "seeds=3", "stack_runs=never", SMOKE)
    one, two = (sweep_plan(*layout, f"threads={n}") for n in (1, 2))
    assert loop.in_processes(two, two.runs, torch.device("cpu"), 2)
    _, groups = loop.build_trainers(one, one.runs, torch.device("cpu"))
    assert [len(group.trainers) for group in groups] == [3, 3]
    rows_one = engine(one, tmp_path / "one.pt")
    rows_two = engine(two, tmp_path / "two.pt")
    pd.testing.assert_frame_equal(
        rows_one.drop(columns="wall_s"), rows_two.drop(columns="wall_s"), check_exact=True
    )
    assert_follows_reference(two, rows_two, final_weights(two, tmp_path / "two.pt"))


@pytest.mark.slow
def test_stacked_runs_follow_the_reference(data_dir, tmp_path):
    """stack_runs=always: two seeds of SGD and of Adam as one batched model (vmap)."""
    plan = sweep_plan("optimizers=[sgd,adam]", "seeds=2", "stack_runs=always", SMOKE)
    built, _ = loop.build_trainers(plan, plan.runs, torch.device("cpu"))
    assert [type(trainer).__name__ for trainer in built] == ["StackTrainer"]
    rows = engine(plan, tmp_path / "checkpoint.pt")
    assert_follows_reference(plan, rows, final_weights(plan, tmp_path / "checkpoint.pt"))


@pytest.mark.slow
def test_a_run_resumed_mid_training_follows_the_reference(data_dir, tmp_path, caplog):
    """A checkpoint at step 10 of 20 (left by the same job stopped at its first
    evaluation: the plan with train.steps=10, whose first 10 steps are the same), resumed:
    the rows and weights are the uninterrupted job's bit for bit, and the reference's."""
    plan = sweep_plan("optimizers=[adam]", "seeds=2", "threads=2", "stack_runs=never", SMOKE)
    lbfgs = run_plan(*LBFGS).optimizers[0]
    plan = dataclasses.replace(plan, optimizers=[*plan.optimizers, lbfgs])
    stopped = plan.trained_for({**plan.train, "steps": 10})
    assert stopped.steps.eval_steps == [10] and plan.steps.eval_steps == [10, 20]
    resumed = tmp_path / "resumed.pt"
    engine(stopped, resumed)
    with caplog.at_level(logging.INFO, logger="optbench"):
        rows = engine(plan, resumed)
    assert "Resuming from resumed.pt at step 10" in caplog.text
    uninterrupted = engine(plan, tmp_path / "uninterrupted.pt")
    pd.testing.assert_frame_equal(
        rows.drop(columns="wall_s"), uninterrupted.drop(columns="wall_s"), check_exact=True
    )
    assert_follows_reference(plan, rows, final_weights(plan, resumed))


def test_a_diverging_run_follows_the_reference(data_dir, tmp_path):
    """SGD at lr 1000 diverges within its first 10 steps: its rows hold no metrics and the
    gradient evaluations up to the evaluation that found it, in the engine as in the
    reference; SGD at its lr beside it trains on."""
    plan = run_plan("optimizer=sgd", "seeds=[0]", SMOKE)
    plan = dataclasses.replace(
        plan, optimizers=[with_keys(plan.optimizers[0], lr=1000.0), *plan.optimizers]
    )
    rows = engine(plan, tmp_path / "checkpoint.pt")
    assert rows["diverged"].tolist() == [True, False, True, False]  # lr 1000, 0.1; steps 10, 20
    assert rows["grad_evals"].tolist() == [10, 10, 10, 20]
    assert_follows_reference(plan, rows, final_weights(plan, tmp_path / "checkpoint.pt"))


def test_the_comparison_fails_when_the_lr_schedule_is_one_step_late(data_dir, tmp_path):
    """The reference trained with the lr halved from the 12th update instead of the 11th
    (step_size 11 in place of 10: one update of 20 at twice the lr) no longer agrees with
    the engine: the tolerances catch an lr schedule off by one step."""
    decay = ("optimizer=sgd", "seeds=[7]", SMOKE, "schedule=step", "schedule.gamma=0.5")
    plan = run_plan(*decay, "schedule.step_size=10")
    late = run_plan(*decay, "schedule.step_size=11")
    rows = engine(plan, tmp_path / "checkpoint.pt")
    weights = final_weights(plan, tmp_path / "checkpoint.pt")
    assert_follows_reference(plan, rows, weights)
    # the same runs (the schedule is not part of a run's identity), one update apart
    assert late.runs == plan.runs and late.fingerprint != plan.fingerprint
    rows["fingerprint"] = late.fingerprint
    with pytest.raises(AssertionError, match="train_loss|last_batch_loss|test_loss"):
        assert_follows_reference(late, rows, weights)


def test_the_engine_does_not_import_the_reference():
    """The reference is a specification and a test oracle, never part of a training."""
    package = ROOT / "src" / "optbench"
    for path in package.rglob("*.py"):
        if path.name == "reference.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            assert not any(name.split(".")[-1] == "reference" for name in names), path
