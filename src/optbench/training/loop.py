"""The training engine: every (optimizer, seed) run of a job advances in one step loop.

On the CPU every run is a RunTrainer (unless stack_runs=always): its own model, computed
with its own tensors through single-threaded kernels, the runs dealt to worker processes
(workers.train_in_processes; worker threads with workers=threads); the runs of one
element-wise optimizer share one optimizer call (trainers.OptimizerGroup). So a run gives
the same numbers bit for bit whatever trains beside it and whatever the number of workers,
by how the computation is laid out. On a GPU
the runs of element-wise optimizers train as one batched model (stack.StackTrainer), which
agrees with a lone run to float rounding.

A run's randomness comes from its seed alone: the initial weights from one stream, the
order of the mini-batches from another. So a seed gives the same run whatever other seeds
or optimizers train beside it, and two optimizers with the same seed start from the same
weights and see the same batches (their comparison is paired).

Evaluation points produce one flat row per run (a dict); `train` returns them as a DataFrame.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from optbench import models
from optbench.data import in_memory
from optbench.labels import counted
from optbench.optimizers import build
from optbench.plan import OptimizerSpec, Plan, RunSpec, StepPlan
from optbench.training import checkpoints, lr_schedules, workers
from optbench.training.stack import StackTrainer
from optbench.training.trainers import (
    Batches,
    OptimizerGroup,
    RunTrainer,
    rows_by_optimizer,
    stream_seed,
)
from optbench.training.workers import Workers

log = logging.getLogger("optbench")


class DataOrder:
    """One seed's mini-batch order: a fresh shuffle each epoch, as DataLoader(shuffle=True).

    Every run with this seed, whatever its optimizer, sees these batches (paired runs)."""

    def __init__(self, seed: int, n_train: int, batch_size: int, device: torch.device):
        self.generator = torch.Generator().manual_seed(stream_seed(seed, "data_order"))
        self.n_train, self.batch_size, self.device = n_train, batch_size, device
        self.batches: list[torch.Tensor] = []  # the rest of this epoch's batches

    def next_batch(self) -> torch.Tensor | None:
        """Indices of the next mini-batch; None for full-batch training (the whole set)."""
        if self.batch_size == self.n_train:
            return None
        if not self.batches:
            order = torch.randperm(self.n_train, generator=self.generator).to(self.device)
            self.batches = list(order.split(self.batch_size))[::-1]
        return self.batches.pop()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])  # a CPU ByteTensor: checkpoints.load
        self.batches = [batch.to(self.device) for batch in state["batches"]]


# ---------------------------------------------------------------------------------------
# How a job's runs are laid out


def should_stack(plan: Plan, spec: OptimizerSpec, device: torch.device) -> bool:
    """Whether an optimizer's runs train in a StackTrainer (one batched model).

    stack_runs=auto stacks the element-wise optimizers' runs on a GPU, where one batched
    model keeps it busy; on the CPU every run trains in a RunTrainer, bit for bit the same
    whatever trains beside it (see workers.Workers). A user's model never stacks: the
    stack computes functionally, without its buffers (BatchNorm's running statistics) and
    its own random draws (dropout)."""
    if plan.stack_runs == "never" or not in_group(plan, spec) or models.is_custom(plan.model):
        return False
    return plan.stack_runs == "always" or device.type == "cuda"


def in_group(plan: Plan, spec: OptimizerSpec) -> bool:
    """Whether an optimizer's runs share one optimizer call (an OptimizerGroup, or the
    optimizers of a stack): element-wise ones, but not on EmbeddingBag's sparse gradients."""
    return spec.traits.elementwise and not plan.model.get("sparse_input", False)


def worker_count(plan: Plan, device: torch.device) -> int:
    """Threads that train runs side by side: `threads`, else torch's default (the physical
    cores); one on a GPU."""
    if device.type == "cuda":
        return 1
    return plan.threads if plan.threads is not None else torch.get_num_threads()


def layout(plan: Plan, specs: list[OptimizerSpec]) -> dict:
    """What decides a job's last digits besides its config, for config.yaml: the device,
    torch's CPU capability (the vector instructions its kernels use), the workers (how
    many, processes or threads) and the threads per kernel, which kernel updates each
    optimizer's tensors, and on a GPU its name, the CUDA and cuDNN versions and cuDNN's
    settings."""
    device = torch.device(plan.device)  # resolved when the plan was made
    count = worker_count(plan, device)
    runs = [RunSpec(spec, seed) for spec in specs for seed in plan.seeds]
    kind = "processes" if in_processes(plan, runs, device, count) else "threads"
    kernels = {
        spec.name: build.implementation(spec.config, device.type)
        if in_group(plan, spec)
        else "default"
        for spec in specs
    }
    return {
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "workers": count,
        "worker_kind": kind if device.type == "cpu" else None,  # as they train, not as asked
        "threads_per_kernel": 1 if device.type == "cpu" else None,
        "optimizer_kernels": kernels,
        **gpu_provenance(device),
    }


def cudnn_settings(device: torch.device) -> dict:
    """cuDNN's settings for a job on the device: on CUDA, deterministic convolution
    algorithms and no autotuning (benchmark mode picks the fastest algorithm by timing, so
    a resumed LeNet job could pick another than the uninterrupted one); none on the CPU."""
    return {"deterministic": True, "benchmark": False} if device.type == "cuda" else {}


def gpu_provenance(device: torch.device) -> dict:
    """For config.yaml, on CUDA only: the GPU's name (in place of the CPU's), the CUDA and
    cuDNN versions torch runs with, and cuDNN's settings (cudnn_settings)."""
    if device.type != "cuda":
        return {}
    settings = {f"cudnn_{name}": value for name, value in cudnn_settings(device).items()}
    return {
        "device_name": torch.cuda.get_device_name(device),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        **settings,
    }


def build_trainers(
    plan: Plan, runs: list[RunSpec], device: torch.device
) -> tuple[list, list[OptimizerGroup]]:
    """The trainers of a job's runs: one StackTrainer of the stacked runs, a RunTrainer per
    other run; and the OptimizerGroups of the RunTrainers that share an optimizer."""
    stacked = [run for run in runs if should_stack(plan, run.optimizer, device)]
    alone = [run for run in runs if not should_stack(plan, run.optimizer, device)]
    trainers: list = [StackTrainer(stacked, plan.model, plan.dataset, device)] if stacked else []
    groups = []
    for spec, rows in rows_by_optimizer(alone).items():
        grouped = in_group(plan, spec)
        its_trainers = [
            RunTrainer(alone[r], plan.model, plan.dataset, device, own_optimizer=not grouped)
            for r in rows
        ]
        trainers += its_trainers
        if grouped:
            groups.append(OptimizerGroup(spec, its_trainers))
    return trainers, groups


class TrainingState:
    """The training state of a job: its trainers, optimizer groups and data orders (what a
    checkpoint saves), and the lr schedule of each optimizer setting."""

    def __init__(
        self, plan: Plan, runs: list[RunSpec], batch_size: int, n_train: int, device: torch.device
    ):
        self.runs = runs
        self.position = {run: i for i, run in enumerate(runs)}  # rows in the order of runs
        if len(self.position) != len(runs):
            raise ValueError("a run appears twice in the runs to train")
        self.trainers, self.groups = build_trainers(plan, runs, device)
        # each setting's schedule (the plan's, or a tuning trial's own warmup), and the
        # optimizers whose lr a schedule changes (none when every schedule is constant)
        specs = dict.fromkeys(run.optimizer for run in runs)
        self.schedules = {spec: lr_schedules.of_setting(plan.lr_schedule, spec) for spec in specs}
        self.scheduled = []
        if not all(lr_schedules.is_constant(schedule) for schedule in self.schedules.values()):
            self.scheduled = [pair for t in self.trainers for pair in t.optimizers_and_specs()]
            self.scheduled += [(group.optimizer, group.spec) for group in self.groups]
        seeds = sorted({run.seed for run in runs})
        self.orders = {seed: DataOrder(seed, n_train, batch_size, device) for seed in seeds}
        self.identity = {  # a checkpoint is resumed only by the job that wrote it
            "format": checkpoints.FORMAT,
            "fingerprint": plan.fingerprint,
            "runs": [run.key for run in runs],
            "trainers": [(type(t).__name__, len(t.runs)) for t in self.trainers],
            "groups": [len(group.trainers) for group in self.groups],
        }

    def evaluation_rows(self, step: int, tensors, test_batch_size: int, workers: Workers):
        """Every run's row at this evaluation step, in the order of the job's runs."""
        tasks = [partial(t.evaluation_rows, step, tensors, test_batch_size) for t in self.trainers]
        evaluated = [{}] * len(self.runs)
        for trainer, its_rows in zip(self.trainers, workers.map(tasks), strict=True):
            for run, row in zip(trainer.runs, its_rows, strict=True):
                evaluated[self.position[run]] = row
        return evaluated

    def state_dict(self, step: int, rows: list[dict]) -> dict:
        return {
            "job": self.identity,
            "step": step,
            "rows": rows,
            "trainers": [trainer.state_dict() for trainer in self.trainers],
            "groups": [group.optimizer.state_dict() for group in self.groups],
            "orders": {seed: order.state_dict() for seed, order in self.orders.items()},
        }

    def resume(self, state: dict | None, checkpoint: Path | None = None) -> tuple[list[dict], int]:
        """The rows and the step of a saved state (checkpoints.load) this same job left, its
        state loaded (from the CPU: each trainer, optimizer and data order moves its tensors
        to the job's device); no rows and step 0 when there is none. Where the checkpoint's
        path is given, the log says what was resumed."""
        if state is None or not checkpoints.belongs(state, self.identity, checkpoint):
            return [], 0
        for trainer, trainer_state in zip(self.trainers, state["trainers"], strict=True):
            trainer.load_state_dict(trainer_state)
        for group, group_state in zip(self.groups, state["groups"], strict=True):
            group.optimizer.load_state_dict(group_state)
        for seed, order in self.orders.items():
            order.load_state_dict(state["orders"][seed])
        return state["rows"], state["step"]


def train_part(plan: Plan, tensors, part: list[RunSpec], saved: dict | None, sink) -> list[dict]:
    """In a worker process: train a share of a job's runs in the step loop, every kernel on
    one thread, from the part's saved state if any; its rows, step by step in part order.
    The sink gets the part's state at every evaluation (sink.state, set here)."""
    device = torch.device(plan.device)
    with Workers(1, device) as pool:
        state = TrainingState(plan, part, plan.steps.batch_size, len(tensors.train_x), device)
        rows, done_steps = state.resume(saved)
        sink.state = state.state_dict
        return step_loop(plan, tensors, state, rows, done_steps, pool, sink)


# ---------------------------------------------------------------------------------------
# The step loop


def train(
    plan: Plan,
    runs: list[RunSpec] | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
) -> pd.DataFrame:
    """Train the plan's runs (or the given ones); one row per run and evaluation point.

    Columns: experiment, dataset, model, fingerprint, optimizer, lr, hyperparameters, seed,
    step, epoch, current_lr (the lr of the step's update: lr x the schedule's factor),
    train_loss (mean mini-batch loss since the previous evaluation),
    last_batch_loss, test_loss, test_accuracy (fraction in [0, 1]), grad_evals (forward +
    backward passes so far), wall_s (seconds of this run's training so far, evaluation
    excluded; a stacked run's share of its stack's time), diverged.

    With `checkpoint`, the whole training state is saved there (atomically) at every
    evaluation point, and a checkpoint left there by this same job is resumed from: the rows
    come out as if never stopped.

    On the CPU the runs are dealt to worker processes (workers.train_in_processes) unless
    workers=threads, one run stacks, or only one worker is asked for; each process trains
    its share in this same step loop. Each step takes, for every run, what
    reference.train_one_run takes for one run, in the same order: the lr, the batch,
    forward, loss, backward, the update, the counting, and at an evaluation step the
    evaluation.
    """
    runs = plan.runs if runs is None else runs
    device = torch.device(plan.device)  # resolved when the plan was made
    torch.backends.cuda.matmul.allow_tf32 = plan.allow_tf32  # torch's default: off
    torch.backends.cudnn.allow_tf32 = plan.allow_tf32  # torch's default: on
    for name, value in cudnn_settings(device).items():
        setattr(torch.backends.cudnn, name, value)
    count = min(worker_count(plan, device), len(runs))
    saved = checkpoints.load(checkpoint) if checkpoint is not None else None
    keys = [run.key for run in runs]
    # a checkpoint the one-process engine left for these runs is resumed by it
    left_by_one_process = saved is not None and "parts" not in saved
    if in_processes(plan, runs, device, count) and not (
        left_by_one_process and saved["job"].get("runs") == keys
    ):
        with Workers(1, device):  # the data loaded with one-thread kernels, as below
            tensors = in_memory.load(plan.dataset, plan.data_dir, device)
        parts = workers.deal(runs, count)
        identity = {  # a checkpoint is resumed only by the job that wrote it, dealt alike
            "format": checkpoints.FORMAT,
            "fingerprint": plan.fingerprint,
            "runs": keys,
            "parts": [[run.key for run in part] for part in parts],
        }
        rows = workers.train_in_processes(
            partial(train_part, plan, tensors),
            runs,
            parts,
            identity,
            saved,
            checkpoint,
            partial(Progress, plan, runs, progress),
        )
    else:
        with Workers(count, device) as pool:
            tensors = in_memory.load(plan.dataset, plan.data_dir, device)
            state = TrainingState(plan, runs, plan.steps.batch_size, len(tensors.train_x), device)
            rows, done_steps = state.resume(saved, checkpoint)
            sink = Progress(plan, runs, progress, done_steps)
            if checkpoint is not None:
                sink.save = lambda step, all_rows: checkpoints.save(
                    checkpoint, state.state_dict(step, all_rows)
                )
            step_loop(plan, tensors, state, rows, done_steps, pool, sink)
            sink.close()
    return pd.DataFrame(rows)


def in_processes(plan: Plan, runs: list[RunSpec], device: torch.device, count: int) -> bool:
    """Whether the job's runs train in worker processes: on Linux's CPU, with
    workers=processes (the default), more than one worker, and no run stacked (a stack is
    one model, not dealt). Elsewhere the workers are threads."""
    if device.type != "cpu" or count < 2 or plan.workers != "processes":
        return False
    if sys.platform != "linux":  # fork is safe with torch on Linux; elsewhere, threads
        return False
    if multiprocessing.current_process().daemon:  # a launcher's worker: it may not fork
        return False
    return not any(should_stack(plan, run.optimizer, device) for run in runs)


def step_loop(
    plan: Plan,
    tensors,
    state: TrainingState,
    rows: list[dict],
    done_steps: int,
    pool: Workers,
    sink,
) -> list[dict]:
    """The steps of a job's (or a worker process's) runs from done_steps on; their rows are
    appended to rows. At every evaluation step the sink gets the rows (sink.evaluated) and
    the whole state to save (sink.save, where it saves); sink.update(n) counts n steps of
    every run."""
    step_plan = plan.steps
    context = {"experiment": plan.experiment, "dataset": plan.dataset["name"]}
    context |= {"model": plan.model["name"], "fingerprint": plan.fingerprint}
    eval_steps = set(step_plan.eval_steps)
    for step in range(done_steps + 1, step_plan.total_steps + 1):
        # 1. The lr of this step's update: each setting's schedule factor at the
        # (step-1)-th update; where a schedule changes anything, every optimizer's lr
        # is set to lr x its factor.
        multiples = {
            spec: lr_schedules.factor(lr_schedule, step - 1, step_plan.total_steps)
            for spec, lr_schedule in state.schedules.items()
        }
        if state.scheduled:
            lr_schedules.set_lr([(o, multiples[spec]) for o, spec in state.scheduled])
        # 2. Each seed's batch, which every run of the seed trains on (paired runs).
        batches = Batches(
            tensors, {seed: order.next_batch() for seed, order in state.orders.items()}
        )
        # 3. Every trainer's forward, loss, backward and counting, on the workers; the
        # update too for a run with its own optimizer and for a stack.
        pool.map([partial(trainer.step, tensors, batches) for trainer in state.trainers])
        # 4. The update of each optimizer group's runs, once all their gradients are in.
        pool.map([group.step for group in state.groups])
        sink.update(1)
        if step not in eval_steps:
            continue
        # 5. Evaluation (divergence found there), the rows, the checkpoint.
        evaluated = state.evaluation_rows(step, tensors, plan.train["test_batch_size"], pool)
        epoch = step / step_plan.steps_per_epoch
        new_rows = []
        for run, row in zip(state.runs, evaluated, strict=True):  # current_lr: this update's
            current_lr = row["lr"] * multiples[run.optimizer]
            new_rows.append({**context, **row, "epoch": epoch, "current_lr": current_lr})
        rows += new_rows
        sink.evaluated(step, new_rows, rows)
    return rows


class Progress:
    """Where a job's progress goes: a bar of every run's steps (tqdm, on a terminal) and at
    each evaluation the mean accuracy, in the bar or else in the log; and the checkpoint,
    where `save` is set."""

    def __init__(self, plan: Plan, runs: list[RunSpec], enabled: bool, done_steps: int = 0):
        self.n_runs, self.total_steps = len(runs), plan.steps.total_steps
        self.bar = progress_bar(len(runs), plan.steps, done_steps, enabled)
        self.save = None  # save(step, rows): the checkpoint at an evaluation step

    def update(self, steps: int, runs: int | None = None) -> None:
        self.bar.update(steps * (self.n_runs if runs is None else runs))

    def evaluated(self, step: int, new_rows: list[dict], rows: list[dict]) -> None:
        if self.save is not None:
            self.save(step, rows)
        self.report(step, new_rows)

    def report(self, step: int, new_rows: list[dict]) -> None:
        """Every run's rows at this evaluation step are in."""
        report_progress(self.bar, new_rows, step, self.total_steps)

    def close(self) -> None:
        self.bar.close()


def progress_bar(n_runs: int, step_plan: StepPlan, done_steps: int, enabled: bool) -> tqdm:
    """A bar of every run's steps; none when output is not a terminal, or not enabled."""
    return tqdm(
        total=step_plan.total_steps * n_runs,
        initial=done_steps * n_runs,
        desc=counted(n_runs, "run"),
        unit="step",
        disable=None if enabled else True,  # None: no bar when output is not a terminal
        dynamic_ncols=True,
        # the accuracy first (in desc), so a narrow terminal still shows it
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )


def report_progress(bar: tqdm, evaluated: list[dict], step: int, total_steps: int) -> None:
    """The mean test accuracy of the healthy runs, in the bar, else in the log; where the
    protocol holds out a validation set, the mean validation accuracy first (what the
    suite and tuning choose by), the test accuracy beside it."""
    healthy = [row for row in evaluated if not row["diverged"]]
    diverged = len(evaluated) - len(healthy)
    test = _mean(healthy, "test_accuracy")
    if all(row.get("validation_accuracy") is None for row in evaluated):
        shown, logged = f"accuracy {test}", f"mean test accuracy {test}"
    else:
        validation = _mean(healthy, "validation_accuracy")
        shown = f"validation accuracy {validation} (test {test})"
        logged = f"mean validation accuracy {validation} (test {test})"
    bar.set_description_str(
        f"{counted(len(evaluated), 'run')}, {shown}, {diverged} diverged", refresh=False
    )
    if bar.disable:  # no progress bar (output is not a terminal): one log line instead
        log.info(
            "step %d/%d: %s over %s (%d diverged)",
            step,
            total_steps,
            logged,
            counted(len(healthy), "run"),
            diverged,
        )


def _mean(rows: list[dict], column: str) -> str:
    """The mean of a column over rows, to 4 decimals; "—" where there are none (every run
    diverged: no accuracy to average)."""
    values = [row[column] for row in rows]
    return f"{sum(values) / len(values):.4f}" if values else "—"
