"""The reference training loop: one run (one optimizer setting, one seed) written out top
to bottom, in plain PyTorch, as the specification of what the engine computes.

The engine (loop.train) trains many runs at once: worker processes, optimizer groups, stacked
models, a written-out ffnn pass, checkpoints. Each of those layouts must give a run the
numbers this loop gives it, to float rounding (tests/test_reference.py). Read this first
to learn what one step does; read loop.py and trainers.py to learn how the engine lays
many steps out. Nothing in the engine imports this module: it is a test oracle.

A run's randomness comes from its seed alone, through streams of its own
(trainers.stream_seed): "init" draws the initial weights, "data_order" shuffles the
training set each epoch, and "optimizer/<moment>" seeds the global generators for an
optimizer that draws random numbers, at its construction and at each step.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from optbench import models
from optbench.data import in_memory
from optbench.optimizers import build, registry
from optbench.plan import Plan, RunSpec
from optbench.training import lr_schedules
from optbench.training.trainers import has_diverged, stream_seed


def train_one_run(plan: Plan, run: RunSpec) -> tuple[list[dict], torch.nn.Module]:
    """One run of the plan, trained on the CPU: its rows (runs.csv's columns, one per
    evaluation step) and its model as training left it."""
    spec, seed = run.optimizer, run.seed
    tensors = in_memory.load(plan.dataset, plan.data_dir, torch.device("cpu"))
    n_train, steps = len(tensors.train_x), plan.steps
    lr_schedule = lr_schedules.of_setting(plan.lr_schedule, spec)  # a trial may warm up its own
    needs = registry.needs(spec.config)  # random draws, Hessian-vector products
    model = models.build_model(plan.model, plan.dataset, stream_seed(seed, "init"))
    with seeded(seed, "init", "random" in needs):
        optimizer = build.build_optimizer(spec.config, model)
    takes_closure = "closure" in inspect.signature(optimizer.step).parameters  # L-BFGS
    data_order = torch.Generator().manual_seed(stream_seed(seed, "data_order"))
    epoch_batches: list[torch.Tensor] = []  # what is left of this epoch's shuffle
    rows, losses, grad_evals, diverged_at, train_s = [], [], 0, None, 0.0

    for step in range(1, steps.total_steps + 1):
        # 1. This update's lr: the configured lr x the schedule's factor at the (step-1)-th
        # update (kept as `initial_lr`, as torch's schedulers keep it; a group with no lr,
        # A2Grad's, sets its own). A constant schedule leaves the lr to the optimizer.
        multiple = lr_schedules.factor(lr_schedule, step - 1, steps.total_steps)
        for group in optimizer.param_groups:
            if group.get("lr") is not None and not lr_schedules.is_constant(lr_schedule):
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * multiple
        # 2. The batch: the next of this epoch's shuffle (a new shuffle once it is used up,
        # as DataLoader(shuffle=True)); the whole set in its order for full-batch training.
        # Taken even by a diverged run: the order belongs to the seed, not to the run.
        if steps.batch_size == n_train:
            x, y = tensors.train_x, tensors.train_y
        else:
            if not epoch_batches:
                shuffle = torch.randperm(n_train, generator=data_order)
                epoch_batches = list(shuffle.split(steps.batch_size))
            index = epoch_batches.pop(0)
            x, y = tensors.train_x[index], tensors.train_y[index]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            """3-4. Forward, loss, backward on this step's batch (x, y: bound here): one
            gradient evaluation."""
            nonlocal grad_evals
            grad_evals += 1
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward(create_graph="hessian" in needs)  # AdaHessian differentiates again
            return loss

        # 5. The update: a diverged run trains no more. An optimizer that evaluates the
        # loss itself (L-BFGS: several times) gets the closure; the loss is the one before
        # this step's update. One that draws random numbers draws them from generators
        # seeded by the run's seed and its gradient evaluations so far.
        if diverged_at is None:
            start = time.perf_counter()
            with seeded(seed, grad_evals, "random" in needs):
                if takes_closure:
                    loss = optimizer.step(closure)
                else:
                    loss = closure()
                    optimizer.step()
            train_s += time.perf_counter() - start
            losses.append(loss.item())  # 6. counting: the batch losses since the evaluation
        if step not in steps.eval_steps:
            continue

        # 7. Evaluation: the mean training loss since the previous evaluation, then the
        # whole test set. A run diverges when either blows up (trainers.has_diverged); from
        # then on its rows hold no metrics and its grad_evals stay where it stopped.
        metrics = {"train_loss": math.nan, "last_batch_loss": math.nan}
        metrics |= {"test_loss": math.nan, "test_accuracy": math.nan}
        if diverged_at is None:
            train_loss, last_batch_loss, losses = sum(losses) / len(losses), losses[-1], []
            test_loss, test_accuracy = evaluate(model, optimizer, tensors, plan.train)
            if has_diverged(train_loss) or not math.isfinite(test_loss):
                diverged_at = grad_evals
            else:
                metrics = {"train_loss": train_loss, "last_batch_loss": last_batch_loss}
                metrics |= {"test_loss": test_loss, "test_accuracy": test_accuracy}
        rows.append(
            {
                "experiment": plan.experiment,
                "dataset": plan.dataset["name"],
                "model": plan.model["name"],
                "fingerprint": plan.fingerprint,
                "optimizer": spec.name,
                "lr": spec.lr,
                "hyperparameters": spec.hyperparameters,
                "seed": seed,
                "step": step,
                **metrics,
                "grad_evals": grad_evals if diverged_at is None else diverged_at,
                "wall_s": train_s,
                "diverged": diverged_at is not None,
                "epoch": step / steps.steps_per_epoch,
                "current_lr": spec.lr * multiple,  # the lr of this step's update
            }
        )
    return rows, model


@torch.no_grad()
def evaluate(model, optimizer, tensors, train: dict) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole test set, in batches of
    train.test_batch_size. A schedule-free optimizer evaluates at its averaged weights
    (optimizer.eval()); training goes on from the exact weights it had."""
    has_modes = callable(getattr(optimizer, "eval", None))
    if has_modes:  # eval() and train() move the weights there and back, which rounds
        weights = [p.detach().clone() for p in model.parameters()]
        optimizer.eval()
    model.eval()
    x, y, batch_size = tensors.test_x, tensors.test_y, train["test_batch_size"]
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    model.train()
    if has_modes:
        optimizer.train()
        for parameter, weight in zip(model.parameters(), weights, strict=True):
            parameter.copy_(weight)
    return loss_sum / len(x), correct / len(x)


@contextlib.contextmanager
def seeded(seed: int, moment: int | str, draws_random: bool):
    """For an optimizer that draws random numbers: torch's, NumPy's and Python's global
    generators seeded from the run's "optimizer/<moment>" stream (moment: "init", or the
    gradient evaluations before a step), and restored after."""
    if not draws_random:
        yield
        return
    moment_seed = stream_seed(seed, f"optimizer/{moment}")
    with torch.random.fork_rng(devices=[]):
        numpy_state, python_state = np.random.get_state(), random.getstate()
        torch.manual_seed(moment_seed)
        np.random.seed(moment_seed % 2**32)
        random.seed(moment_seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
