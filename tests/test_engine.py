"""The engine: real MNIST training, its layouts bit for bit against one another (against the
reference training loop: tests/test_reference.py)."""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from constants import LINE_SEARCH, SMOKE
from omegaconf import OmegaConf

from optbench import models
from optbench.data.in_memory import load
from optbench.optimizers import registry
from optbench.plan import OptimizerSpec, make_step_plan
from optbench.training import checkpoints, loop, stack, trainers
from optbench.training.trainers import has_diverged

from conftest import ROOT, run_plan, sweep_plan

RESULT_COLUMNS = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy"]


def without_time(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop(columns="wall_s").reset_index(drop=True)


@pytest.mark.parametrize(
    ("train", "n_train", "expected"),
    [
        (
            {"batch_size": 100, "epochs": 5, "eval_every": 500},
            60000,
            (100, 600, 3000, [500, 1000, 1500, 2000, 2500, 3000]),
        ),
        ({"batch_size": 64, "epochs": 2}, 60000, (64, 938, 1876, [938, 1876])),
        (
            {"batch_size": 64, "epochs": 9, "steps": 25, "eval_every": 10},
            1000,
            (64, 16, 25, [10, 20, 25]),
        ),
        ({"batch_size": "full", "epochs": 3}, 1000, (1000, 1, 3, [1, 2, 3])),
    ],
)
def test_step_plan_by_hand(train, n_train, expected):
    defaults = {
        "batch_size": 64,
        "epochs": 1,
        "steps": None,
        "eval_every": None,
        "test_batch_size": 1000,
    }
    step_plan = make_step_plan(defaults | train, n_train)
    assert (
        step_plan.batch_size,
        step_plan.steps_per_epoch,
        step_plan.total_steps,
        step_plan.eval_steps,
    ) == expected


def test_every_optimizer_lowers_the_training_loss(data_dir, device):
    plan = sweep_plan(
        device,
        "optimizers=[sgd,momentum,nesterov,adagrad,adadelta,rmsprop,adam,amsgrad,adamw,adamax]",
        "dataset.train_size=2000",
        "train.batch_size=50",
        "train.steps=80",
        "train.eval_every=40",
        "seeds=2",
    )
    runs = loop.train(plan, progress=False)
    assert len(runs) == 10 * 2 * 2
    assert runs[RESULT_COLUMNS].notna().all().all()
    for (name, seed), rows in runs.groupby(["optimizer", "seed"]):
        first, last = rows.sort_values("step")["train_loss"].to_numpy()
        assert last < first < math.log(10) + 0.5, (name, seed, first, last)
        assert rows["test_accuracy"].between(0, 1).all()


def test_the_same_seed_gives_identical_rows(data_dir, device):
    """Bit for bit on the CPU; on CUDA, whose kernels may sum in another order from one call
    to the next, to float rounding."""
    plan = run_plan(device, "optimizer=adam", "seeds=2", SMOKE)
    first = loop.train(plan, progress=False)
    second = loop.train(plan, progress=False)
    exact = device == "device=cpu"
    pd.testing.assert_frame_equal(
        without_time(first), without_time(second), check_exact=exact, rtol=1e-5
    )


# optbench's own (tests/test_library.py: pytorch_optimizer's registry)
ELEMENTWISE = sorted(
    name
    for name in registry.own_configs()
    if OmegaConf.load(ROOT / "configs" / "optimizer" / f"{name}.yaml").get("elementwise", False)
)


def with_keys(spec: OptimizerSpec, **keys) -> OptimizerSpec:
    """An optimizer setting with some keys set (as optimizer.KEY=... would)."""
    return OptimizerSpec.of({**spec.config, **keys})


def training(plan, optimizers=None) -> pd.DataFrame:
    """The rows of the plan's runs (with other optimizer settings), time left out."""
    if optimizers is not None:
        plan = dataclasses.replace(plan, optimizers=optimizers)
    return without_time(loop.train(plan, progress=False))


# a narrow LeNet: a full one's pass over the 10,000 test images would be most of a test's time
NARROW_LENET = (
    "model=lenet",
    "model.conv1_channels=4",
    "model.conv2_channels=6",
    "model.hidden=32",
)

# Every layout a run can train in on the CPU; each gives it the same numbers bit for bit as
# the run alone on one thread.
LAYOUTS = {  # threads=N: N workers, processes unless workers=threads
    "alone, 2 processes": ("seeds=[1]", "threads=2"),
    "stack_runs=never": ("seeds=[1]", "threads=2", "stack_runs=never"),
    "2 runs": ("seeds=[0,1]", "threads=2"),
    "5 runs, 1 thread": ("seeds=5", "threads=1"),
    "5 runs, 2 threads": ("seeds=5", "threads=2", "workers=threads"),
    "5 runs, 2 processes": ("seeds=5", "threads=2"),
    "40 runs": ("seeds=5", "threads=2"),  # 8 optimizer configs x 5 seeds
    "40 runs, 3 processes": ("seeds=5", "threads=3"),
    "40 runs, 2 threads": ("seeds=5", "threads=2", "workers=threads"),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        ("model=ffnn", "dataset.train_size=1000", "train.batch_size=50", "train.steps=30"),
        (*NARROW_LENET, "dataset.train_size=300", "train.batch_size=20", "train.steps=4"),
    ],
    ids=["ffnn", "lenet"],
)
def test_a_run_gives_the_same_numbers_in_every_layout(data_dir, model):
    """By construction, not by observation: seed 1 of fused Adam, Adam without its fused
    kernel, foreach RMSprop and L-BFGS, alone on one thread, against every layout in
    LAYOUTS (the 40-run job holds four more optimizers)."""

    def job(*overrides: str, more: bool = False) -> pd.DataFrame:
        plan = sweep_plan(
            "optimizers=[adam,rmsprop,sgd]", *model, "train.eval_every=15", *overrides
        )
        adam, rmsprop, sgd = plan.optimizers
        chosen = [adam, with_keys(adam, name="adam_unfused", fused=False), rmsprop]
        chosen += run_plan("optimizer=lbfgs", LINE_SEARCH, "optimizer.max_iter=3").optimizers
        if more:
            chosen += [sgd, with_keys(sgd, name="momentum", momentum=0.9)]
            chosen += [with_keys(rmsprop, name="rmsprop_2", lr=0.003)]
            chosen += [with_keys(adam, name="adam_2", lr=0.01)]
        return training(plan, chosen)

    reference = job("seeds=[1]", "threads=1")
    assert reference["train_loss"].notna().all() and reference["optimizer"].nunique() == 4
    for layout, overrides in LAYOUTS.items():
        runs = job(*overrides, more=layout.startswith("40 runs"))
        if layout.startswith("40 runs"):
            assert runs[["optimizer", "seed"]].drop_duplicates().shape[0] == 40
        picked = runs[(runs.seed == 1) & runs.optimizer.isin(reference.optimizer)]
        pd.testing.assert_frame_equal(
            picked.reset_index(drop=True), reference, check_exact=True, obj=layout
        )


@pytest.mark.slow
def test_every_elementwise_optimizer_gives_the_same_run_grouped_as_alone(data_dir):
    """Bit for bit: 2 seeds of every element-wise optimizer in one job, against seed 1 of
    each optimizer trained alone."""
    assert len(ELEMENTWISE) >= 20  # torch.optim's and the textbook ones
    short = ("train.steps=20", "train.eval_every=10")
    plan = sweep_plan(f"optimizers=[{','.join(ELEMENTWISE)}]", "seeds=2", SMOKE, *short)
    together = training(plan)
    for spec in plan.optimizers:  # each as `optbench run optimizer=NAME seeds=[1]` trains it
        alone = training(dataclasses.replace(plan, optimizers=[spec], seeds=[1]))
        picked = together[(together.optimizer == spec.name) & (together.seed == 1)]
        pd.testing.assert_frame_equal(picked.reset_index(drop=True), alone, check_exact=True)


def assert_stacked_agrees_with_run_by_run(*overrides: str, rtol: float) -> None:
    """The same sweep with stack_runs=always and =never: every loss within rtol, every
    test accuracy within two test examples (a rounding may flip one prediction, a step of
    1/N, which no relative tolerance on the accuracy allows for)."""
    plans = [sweep_plan(*overrides, f"stack_runs={mode}") for mode in ("always", "never")]
    stacked, alone = (loop.train(plan, progress=False) for plan in plans)
    n_test = plans[0].dataset["test_size"] or 10_000
    accuracy_gap = (stacked["test_accuracy"] - alone["test_accuracy"]).abs().max()
    assert accuracy_gap <= 2 / n_test, accuracy_gap
    for column in [c for c in RESULT_COLUMNS if c != "test_accuracy"]:
        torch.testing.assert_close(
            torch.tensor(stacked[column].to_numpy()),
            torch.tensor(alone[column].to_numpy()),
            rtol=rtol,
            atol=0,
            msg=column,
        )


def test_stacked_and_run_by_run_training_agree_to_float_rounding(data_dir, device):
    """The stack's batched matmuls and a lone run's matmuls are different kernels: their
    sums round differently, by about 1e-7 relative after a step. (Over many steps such
    differences grow; each path is deterministic.) The tolerance the README states for a
    stacked run."""
    assert_stacked_agrees_with_run_by_run(
        device,
        "optimizers=[sgd,adam,rmsprop]",
        "seeds=2",
        "dataset.train_size=1000",
        "train.steps=1",
        "train.eval_every=1",
        rtol=1e-6,
    )


def test_stacked_lenets_agree_with_lenets_trained_alone(data_dir, device):
    """The vmap path (models.VmappedModel: grouped convolutions), as a GPU takes it. Its
    gradients come out transposed: a fused kernel handed them as they are (torch 2.15) gave
    test accuracies of 0.087 against 0.121 after one step."""
    assert_stacked_agrees_with_run_by_run(
        device,
        *NARROW_LENET,
        "optimizers=[sgd,adam]",
        "seeds=2",
        "train.batch_size=50",
        "dataset.train_size=500",
        "train.steps=2",
        "train.eval_every=1",
        rtol=1e-5,
    )


@pytest.mark.slow
def test_optimizers_that_are_not_elementwise_train_beside_a_stack(data_dir):
    """L-BFGS (whole-tensor dot products) trains in a RunTrainer beside a StackTrainer (as on
    a GPU), and gives the same rows as alone; the stacked ones are untouched by it."""
    choices = {"adam": ("optimizer=adam",), "lbfgs": ("optimizer=lbfgs", LINE_SEARCH)}
    layout = ("stack_runs=always", "seeds=2", SMOKE, "train.steps=10", "train.eval_every=5")
    alone = {name: run_plan(*choice, *layout) for name, choice in choices.items()}
    plan = alone["adam"]
    specs = [p.optimizers[0] for p in alone.values()]
    cpu = torch.device("cpu")
    assert [loop.should_stack(plan, spec, cpu) for spec in specs] == [True, False]
    together = training(plan, specs)
    for name, alone_plan in alone.items():
        picked = together[together.optimizer == name].reset_index(drop=True)
        pd.testing.assert_frame_equal(picked, training(alone_plan), check_exact=True)


@pytest.mark.parametrize("stack_runs", ["never", "always"])
def test_a_diverging_run_leaves_the_others_untouched(data_dir, stack_runs):
    """In an optimizer group (bit for bit) and in a stack (to float rounding: a stack of
    other size sums in another order)."""
    layout = (f"stack_runs={stack_runs}", "optimizers=[sgd]", "seeds=2", SMOKE)
    together = training(sweep_plan(*layout, "lr_grid=[1,1e8]"))
    wild = together[together.lr == 1e7]
    assert len(wild) == 2 * 2 and wild["diverged"].all() and wild["test_accuracy"].isna().all()
    assert (wild["grad_evals"] == 10).all()  # counted up to the evaluation that found it
    tame = together[together.lr == 0.1].reset_index(drop=True)
    exact = stack_runs == "never"
    pd.testing.assert_frame_equal(tame, training(sweep_plan(*layout)), check_exact=exact, rtol=1e-5)


def test_a_loss_above_the_bound_is_divergence_and_a_recovering_run_is_not(data_dir):
    """SGD at lr 1000 passes trainers.DIVERGED_LOSS within its first 10 steps (a finite
    loss, which the non-finite check alone let through): diverged. RMSprop at lr 1 spikes
    to a mean loss in the tens of thousands over its first 10 steps and recovers: not
    diverged. A stacked run and a lone run agree."""
    plan = sweep_plan("optimizers=[sgd,rmsprop]", "seeds=2", SMOKE)
    sgd, rmsprop = plan.optimizers
    specs = [with_keys(sgd, lr=1000.0), with_keys(rmsprop, lr=1.0)]
    lone = training(plan, specs)
    stacked = training(dataclasses.replace(plan, stack_runs="always"), specs)
    for runs in (lone, stacked):
        wild, spiky = runs[runs.optimizer == "sgd"], runs[runs.optimizer == "rmsprop"]
        assert wild["diverged"].all() and (wild["grad_evals"] == 10).all()
        assert not spiky["diverged"].any()
        first, last = (spiky[spiky.step == step]["train_loss"] for step in (10, 20))
        assert (first > 1e4).all() and (last.to_numpy() < first.to_numpy() / 10).all()
    pd.testing.assert_series_equal(lone["diverged"], stacked["diverged"])


def test_the_committed_recovering_runs_lie_below_the_divergence_bound():
    """The lr-sensitivity runs committed in results/ (RMSprop at lr 1 reaches a mean
    training loss of 1105 over its epoch, and ends near chance, not NaN) are not diverged
    under the bound: it is above every loss they reached."""
    runs = pd.read_csv(ROOT / "results" / "lr_sensitivity_wizard_ffnn" / "runs.csv")
    spiky = runs[(runs.optimizer == "rmsprop") & (runs.lr == 1.0)]
    assert spiky["train_loss"].max() > 1000 and spiky["test_loss"].lt(5).all()
    assert not any(map(has_diverged, runs["train_loss"]))
    assert has_diverged(math.nan) and has_diverged(math.inf) and has_diverged(2.5e11)


def test_full_batch_and_epoch_columns(data_dir):
    plan = run_plan(
        "train.batch_size=full", "dataset.train_size=300", "train.epochs=3", "train.eval_every=1"
    )
    runs = loop.train(plan, progress=False)
    assert runs["step"].tolist() == [1, 2, 3] and runs["epoch"].tolist() == [1.0, 2.0, 3.0]
    assert (runs["train_loss"] == runs["last_batch_loss"]).all()  # one step per evaluation
    assert runs["wall_s"].is_monotonic_increasing


@pytest.mark.parametrize("experiment", ["wizard_ffnn", "simple_nn"])
@pytest.mark.parametrize(("batch_size", "steps"), [("full", 1), (1, 200), (50, 4)])
def test_the_three_regimes_run_on_both_ffnn_presets(data_dir, experiment, batch_size, steps):
    """Full-batch gradient descent, pure SGD and mini-batch: one epoch of 200 examples."""
    plan = run_plan(
        f"experiment={experiment}",
        "optimizer=sgd",
        f"train.batch_size={batch_size}",
        "dataset.train_size=200",
        "train.epochs=1",
        "train.eval_every=null",
    )
    runs = loop.train(plan, progress=False)
    assert runs["step"].tolist() == [steps] and runs["epoch"].tolist() == [1.0]
    assert runs[RESULT_COLUMNS].notna().all().all()


def test_a_checkpoint_loads_to_the_cpu_where_a_data_order_accepts_its_state(tmp_path):
    """A data order's generator state is a CPU ByteTensor: mapped to the job's device as
    torch.load(map_location=device) does (here the meta device, as a GPU would), torch
    refuses it. checkpoints.load keeps every tensor on the CPU, and the order resumed from it
    draws the batches the saved one draws."""
    cpu = torch.device("cpu")
    order = loop.DataOrder(seed=0, n_train=1000, batch_size=100, device=cpu)
    order.next_batch()
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"job": {}, "orders": {0: order.state_dict()}})
    mapped = torch.load(path, map_location="meta", weights_only=True)
    with pytest.raises(TypeError, match="ByteTensor"):
        loop.DataOrder(0, 1000, 100, cpu).load_state_dict(mapped["orders"][0])
    state = checkpoints.load(path)
    saved = state["orders"][0]
    assert {t.device.type for t in [saved["generator"], *saved["batches"]]} == {"cpu"}
    resumed = loop.DataOrder(0, 1000, 100, cpu)
    resumed.load_state_dict(saved)
    for _ in range(25):  # the rest of this epoch and the next two
        assert torch.equal(resumed.next_batch(), order.next_batch())


def test_the_stacked_test_batch_keeps_the_widest_layer_output_within_its_budget():
    """The LeNet's widest layer output on MNIST is its first convolution's, 20 x 24 x 24
    values per example and run. The test batch is the largest that keeps [n, R x 20, 24, 24]
    float32 within the budget, up to train.test_batch_size (1,000 up to R = 5; 64 at R = 90,
    which took 4.1 GB before), and never below one example."""
    lenet = {"name": "lenet"}
    mnist = {"input_shape": [1, 28, 28], "num_classes": 10}
    stacked = models.stacked([models.build_model(lenet, mnist, seed) for seed in range(2)])
    widest = stacked.widest_output((1, 28, 28))
    assert widest == 20 * 24 * 24
    budget = stack.EVAL_BUDGET_BYTES
    for n_runs in range(1, 200):
        rows = stack.stacked_test_batch(1000, n_runs, widest)
        assert 1 <= rows <= 1000
        assert rows * n_runs * widest * 4 <= budget
        assert rows == 1000 or (rows + 1) * n_runs * widest * 4 > budget
    assert stack.stacked_test_batch(1000, 5, widest) == 1000
    assert stack.stacked_test_batch(1000, 90, widest) == 64
    assert stack.stacked_test_batch(1000, 10**6, widest) == 1


def test_a_stacked_evaluation_in_smaller_batches_gives_the_same_results(data_dir):
    """A stack's test loss and accuracy do not depend on how the test set is split into
    batches (as a large stack splits it): losses agree to float rounding, accuracies within
    one example's worth."""
    plan = sweep_plan(SMOKE, "model=lenet", "optimizers=[sgd,adam]", "seeds=2", "stack_runs=always")
    cpu = torch.device("cpu")
    tensors = load(plan.dataset, plan.data_dir, cpu)
    trainer = stack.StackTrainer(plan.runs, plan.model, plan.dataset, cpu)
    order = {seed: loop.DataOrder(seed, len(tensors.train_x), 64, cpu) for seed in (0, 1)}
    for _ in range(3):  # a few steps away from the initial weights
        trainer.step(tensors, {seed: o.next_batch() for seed, o in order.items()})
    whole, split = trainer.test(tensors, 1000), trainer.test(tensors, 37)
    assert len(whole) == len(plan.runs) == 4
    for (loss, accuracy), (split_loss, split_accuracy) in zip(whole, split, strict=True):
        assert split_loss == pytest.approx(loss, rel=1e-5)
        assert abs(split_accuracy - accuracy) <= 1 / len(tensors.test_x)


@pytest.mark.parametrize("layout", ["stack_runs=never", "stack_runs=always"])
def test_each_run_is_timed_on_every_device(data_dir, device, layout):
    """wall_s grows with every evaluation and is positive, for runs alone, in a group
    (sgd: one optimizer call for its runs) and stacked; on a GPU from CUDA events read at
    the evaluations (trainers.StepClock), not from the kernel launches."""
    plan = sweep_plan(device, layout, "optimizers=[sgd,rmsprop]", "seeds=2", SMOKE)
    runs = loop.train(plan, progress=False)
    for _, run in runs.groupby(["optimizer", "seed"]):
        seconds = run.sort_values("step")["wall_s"].to_numpy()
        assert (seconds > 0).all() and (np.diff(seconds) > 0).all()


def test_a_cpu_step_clock_reads_the_time_at_once_and_splits_a_shared_step():
    timer = trainers.StepClock(torch.device("cpu"))
    start = timer.start()
    time.sleep(0.02)
    whole = timer.stop(start)
    start = timer.start()
    time.sleep(0.02)
    share = timer.stop(start, shares=4)
    assert whole >= 0.02 and 0.005 <= share < whole / 2
    assert timer.collect() == 0.0 and timer.pending == []


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are Linux's")
@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        (("threads=2",), "processes"),
        (("threads=2", "workers=threads"), "threads"),
        (("threads=1",), "threads"),  # one worker: the job's own thread
        (("threads=2", "stack_runs=always"), "threads"),  # a stack is one model, not dealt
    ],
)
def test_config_yaml_records_the_workers_the_runs_train_in(overrides, kind):
    """layout's worker_kind is what the job does, not what workers= asked for: processes
    only where the runs are dealt to worker processes."""
    plan = sweep_plan("optimizers=[sgd,adam]", "device=cpu", "seeds=2", SMOKE, *overrides)
    assert loop.layout(plan, plan.optimizers)["worker_kind"] == kind


def test_the_plan_carries_its_steps_and_resolved_device():
    """Made once with the plan: the training's steps, and device=auto resolved."""
    plan = run_plan("optimizer=adam", "device=auto", "train.batch_size=64", SMOKE)
    assert plan.steps == make_step_plan(plan.train, 1000)  # debug=smoke: 1,000 examples
    assert plan.steps.total_steps == 20 and plan.steps.eval_steps == [10, 20]
    assert plan.device == ("cuda" if torch.cuda.is_available() else "cpu")
