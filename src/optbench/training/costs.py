"""What each optimizer costs, measured on the run's own model and device: the bytes of
optimizer state per model parameter (counted in the state after a few real steps) and the
milliseconds a step of one run takes on one core, as the engine trains it (a short timed
loop on real batches; the settings are timed side by side, one per core).

costs.csv holds one row per optimizer setting of a results folder; the report shows it and
costs.png sets it beside the final accuracy. Memory is counted, not quoted: it is what the
optimizer object holds (moments, histories, preconditioners), so it answers "how much more
memory does Adam need than SGD?" with a number.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from optbench.data import in_memory
from optbench.files import write_csv
from optbench.plan import OptimizerSpec, Plan, RunSpec
from optbench.training import loop
from optbench.training.trainers import Batches
from optbench.training.workers import Workers

COSTS_CSV = "costs.csv"
WARMUP_STEPS = 3  # untimed: the first steps allocate the state and warm the caches
TIMED_STEPS = 10  # ms_per_step is their median


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps in its state (in lists and dicts too)."""

    def size(value) -> int:
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, list | tuple):
            return sum(size(v) for v in value)
        return 0

    return sum(size(state) for state in optimizer.state.values())


def build_one_run(plan: Plan, spec: OptimizerSpec, device: torch.device) -> tuple:
    """The trainer and optimizer groups of the setting's run with seed 0, on its own (not
    grouped with other runs; its own model, the engine's kernels). Built in the calling
    thread: drawing the initial weights seeds torch's global generator."""
    alone = dataclasses.replace(plan, stack_runs="never")
    return loop.build_trainers(alone, [RunSpec(spec, 0)], device)


def time_steps(plan: Plan, built: tuple, tensors, device: torch.device) -> dict:
    """Train a run built by build_one_run for the warm-up and timed steps; its costs: the
    state bytes after the warm-up steps, and the median milliseconds of the timed steps."""
    (trainer,), groups = built
    batch_size = plan.steps.batch_size
    order = loop.DataOrder(0, len(tensors.train_x), batch_size, device)
    times = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        trainer.step(tensors, Batches(tensors, {0: order.next_batch()}))
        for group in groups:
            group.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    optimizer = groups[0].optimizer if groups else trainer.optimizer
    params = sum(p.numel() for p in trainer.model.parameters())
    held = state_bytes(optimizer)
    return {
        "state_bytes": held,
        "params": params,
        "state_bytes_per_param": held / params,
        "ms_per_step": 1000 * statistics.median(times),
        "device": device.type,
        "steps_timed": TIMED_STEPS,
    }


def write_costs(out_dir: Path, plan: Plan, settings: dict[str, dict]) -> pd.DataFrame | None:
    """costs.csv for every optimizer setting (label -> config) of a results folder; returns
    its table (None where there is no file). The settings costs.csv has already measured
    keep their rows: the same command again (all runs complete) leaves the file as it was."""
    path = Path(out_dir) / COSTS_CSV
    known = pd.read_csv(path) if path.is_file() else pd.DataFrame({"optimizer": []})
    missing = [label for label in settings if label not in set(known["optimizer"])]
    if not missing:
        return known if path.is_file() else None
    known = known.set_index("optimizer")
    device = torch.device(plan.device)
    # single-threaded kernels and one run per worker thread, as the engine trains: the
    # settings are timed side by side, one per core
    with Workers(loop.worker_count(plan, device), device) as workers:
        tensors = in_memory.load(plan.dataset, plan.data_dir, device)
        runs = [build_one_run(plan, OptimizerSpec.of(settings[label]), device) for label in missing]
        timed = workers.map([partial(time_steps, plan, run, tensors, device) for run in runs])
    measured = dict(zip(missing, timed, strict=True))
    rows = [
        {"optimizer": label, **(measured[label] if label in measured else known.loc[label])}
        for label in settings
    ]
    table = pd.DataFrame(rows)
    write_csv(table, path)
    return table
