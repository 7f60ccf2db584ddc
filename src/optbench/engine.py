"""The training engine: every (optimizer, seed) run of a job advances in one step loop.

On the CPU every run is a `Run`: its own model, computed with its own tensors through
single-threaded kernels, the runs spread over worker threads (`Workers`); the runs of one
element-wise optimizer share one optimizer call (`OptimizerGroup`). So a run gives the same
numbers bit for bit whatever trains beside it and whatever the number of threads, by how
the computation is laid out. On a GPU the runs of element-wise optimizers train as one
batched model (`Stack`), which agrees with a lone run to float rounding.

A run's randomness comes from its seed alone: the initial weights from one stream, the
order of the mini-batches from another. So a seed gives the same run whatever other seeds
or optimizers train beside it, and two optimizers with the same seed start from the same
weights and see the same batches (their comparison is paired).

Evaluation points produce one flat row per run (a dict); `train` returns them as a DataFrame.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from optbench import data, models, optimizers, results
from optbench.config import ConfigError, fingerprint, hyperparameters, run_key, seed_list

log = logging.getLogger("optbench")

# The layout of the trainers' states in a checkpoint; a checkpoint of another layout (an
# earlier optbench) is not resumed.
CHECKPOINT_FORMAT = 3

METRICS = ("train_loss", "last_batch_loss", "test_loss", "test_accuracy")  # NaN once diverged


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream ("init", "data_order") of a run."""
    digest = hashlib.sha256(f"optbench/{stream}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but PyTorch sees no CUDA device on this machine; valid choices: "
            "auto (CUDA when present, else CPU), cpu, cuda."
        )
    return torch.device(device)


@dataclass
class Schedule:
    batch_size: int  # examples per step
    steps_per_epoch: int  # ceil(n_train / batch_size): the last batch of an epoch may be smaller
    total_steps: int
    eval_steps: list[int]  # steps after which every run is evaluated (always ends at total_steps)


def make_schedule(train: DictConfig, n_train: int) -> Schedule:
    batch_size = n_train if train.batch_size == "full" else train.batch_size
    if batch_size > n_train:
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the training set ({n_train} "
            "examples); use at most that, or train.batch_size=full."
        )
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = train.steps if train.steps is not None else train.epochs * steps_per_epoch
    every = train.eval_every if train.eval_every is not None else steps_per_epoch
    eval_steps = list(range(every, total_steps + 1, every))
    if not eval_steps or eval_steps[-1] != total_steps:
        eval_steps.append(total_steps)
    return Schedule(batch_size, steps_per_epoch, total_steps, eval_steps)


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
        self.generator.set_state(state["generator"])
        self.batches = [batch.to(self.device) for batch in state["batches"]]


class Progress:
    """What a trainer accumulates as it trains; with its weights and optimizer states, a
    checkpoint holds these, so that a resumed run continues exactly where it stopped."""

    COUNTERS = ("loss_sum", "loss_count", "last_loss", "grad_evals", "train_s", "diverged")

    def start_counting(self, n_runs: int, device: torch.device) -> None:
        self.loss_sum = torch.zeros(n_runs, device=device)  # batch losses since last evaluation
        self.loss_count = 0
        self.last_loss = torch.full((n_runs,), math.nan, device=device)
        self.grad_evals = 0  # forward + backward passes so far
        self.train_s = 0.0  # seconds spent in these runs' steps

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in self.COUNTERS}

    def load_counters(self, state: dict) -> None:
        for name in self.COUNTERS:
            setattr(self, name, state[name])


def run_row(optimizer_cfg: DictConfig, seed: int, **measured) -> dict:
    """A row of runs.csv, less the experiment context: which run, then its measurements
    (step, train_loss, last_batch_loss, test_loss, test_accuracy, grad_evals, wall_s,
    diverged)."""
    lr = float(optimizer_cfg.get("lr", math.nan))
    settings = hyperparameters(optimizer_cfg)
    identity = {"optimizer": optimizer_cfg.name, "lr": lr, "hyperparameters": settings}
    return {**identity, "seed": seed, **measured}


class Stack(Progress):
    """Runs of element-wise optimizers trained as one batched model: where a GPU trains the
    runs (stack_runs=auto on CUDA, or stack_runs=always).

    Every parameter is one tensor with a leading run dimension, [R, ...], stacked from the
    runs' own initial models, and torch.func.vmap computes all R runs' losses and gradients
    at once (models.VmappedModel: batched matmuls, grouped convolutions). Each run gets its
    own gradient, up to float rounding: a batched kernel sums in another order than a lone
    run's kernel, so a stacked run agrees with the same run trained alone to a stated
    tolerance, not bit for bit (tests/test_engine.py).

    Each optimizer owns a block of rows: its parameters are views of each run's rows, so
    torch.optim updates the stacked tensors in place. That is exact only for optimizers
    whose update is element-wise (optimizer config `elementwise: true`); the others train
    as `Run`s.
    """

    def __init__(self, runs: list[tuple[DictConfig, int]], cfg: DictConfig, device: torch.device):
        self.runs = runs
        self.model = models.stacked(
            [
                models.build_model(cfg.model, cfg.dataset, stream_seed(seed, "init")).to(device)
                for _, seed in runs
            ]
        )
        params = list(self.model.params.values())  # each [R, ...]
        # per optimizer: (optimizer, its views of the parameters, each view's (i, row))
        self.optimizers = []
        for optimizer_cfg, block in _blocks(runs):
            parts = [(i, r) for r in range(block.start, block.stop) for i in range(len(params))]
            views = [params[i].detach()[r] for i, r in parts]
            implementation = optimizers.implementation(optimizer_cfg)
            optimizer = optimizers.build_optimizer(optimizer_cfg, views, implementation)
            self.optimizers.append((optimizer, views, parts))
        self.run_seeds = [seed for _, seed in runs]
        self.start_counting(len(runs), device)
        # per run: None, or its grad_evals at the evaluation that found it diverged
        self.diverged: list[int | None] = [None] * len(runs)

    def step(self, tensors: data.TensorData, batches: dict[int, torch.Tensor | None]) -> None:
        start = time.perf_counter()
        if batches[self.run_seeds[0]] is None:  # full batch: one group of inputs for all runs
            x, y = tensors.train_x.unsqueeze(0), tensors.train_y.unsqueeze(0)
        else:  # a group per run: its own mini-batch
            index = torch.stack([batches[seed] for seed in self.run_seeds])  # [R, B]
            images = tensors.train_x.flatten(1)  # a 2-D gather is 3x faster than a 4-D one
            x = images.index_select(0, index.flatten())
            x = x.view(*index.shape, *tensors.train_x.shape[1:])
            y = tensors.train_y.index_select(0, index.flatten()).view(index.shape)
        losses, grads = self.model.losses_and_grads(x, y)  # each run's rows: its own gradient
        # torch 2.15's fused kernels read a gradient as if laid out like its parameter (a
        # transposed one gives a wrong update), and vmap's can come out transposed
        grads = [grad.contiguous() for grad in grads]
        for optimizer, views, parts in self.optimizers:
            for view, (i, rows) in zip(views, parts, strict=True):
                view.grad = grads[i][rows]
            optimizer.step()
        self.loss_sum += losses
        self.loss_count += 1
        self.last_loss = losses
        self.grad_evals += 1
        self.train_s += time.perf_counter() - start

    def state_dict(self) -> dict:
        params = {name: p.detach() for name, p in self.model.params.items()}
        optimizer_states = [optimizer.state_dict() for optimizer, _, _ in self.optimizers]
        return {"params": params, "optimizers": optimizer_states, **self.counters()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, p in self.model.params.items():
            p.copy_(state["params"][name])  # in place: the optimizers' views stay valid
        for (optimizer, _, _), optimizer_state in zip(
            self.optimizers, state["optimizers"], strict=True
        ):
            optimizer.load_state_dict(optimizer_state)
        self.load_counters(state)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[list, list]:
        """Each run's mean cross-entropy and accuracy over the whole test set."""
        n_runs = len(self.runs)
        loss_sum = torch.zeros(n_runs, device=x.device, dtype=torch.float64)
        correct = torch.zeros(n_runs, device=x.device, dtype=torch.int64)
        for start in range(0, len(x), batch_size):
            logits = self.model.logits(x[start : start + batch_size].unsqueeze(0))  # [R, n, C]
            target = y[start : start + batch_size].expand(n_runs, -1)
            losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            loss_sum += losses.sum(dim=1).double()
            correct += (logits.argmax(dim=2) == target).sum(dim=1)
        return (loss_sum / len(x)).tolist(), (correct.double() / len(x)).tolist()

    def evaluation_rows(self, step: int, tensors: data.TensorData, test_batch_size: int):
        train_loss = (self.loss_sum / self.loss_count).tolist()  # one host synchronisation
        last_loss = self.last_loss.tolist()
        test_loss, test_accuracy = self.evaluate(tensors.test_x, tensors.test_y, test_batch_size)
        self.loss_sum.zero_()
        self.loss_count = 0
        rows = []
        for r, (optimizer_cfg, seed) in enumerate(self.runs):
            if self.diverged[r] is None and not math.isfinite(train_loss[r]):
                self.diverged[r] = self.grad_evals  # it counts no step after this one
            measured = (train_loss[r], last_loss[r], test_loss[r], test_accuracy[r])
            if self.diverged[r] is not None:  # it keeps computing in the stack, unreported
                measured = (math.nan,) * 4
            rows.append(
                run_row(
                    optimizer_cfg,
                    seed,
                    step=step,
                    **dict(zip(METRICS, measured, strict=True)),
                    grad_evals=self.diverged[r] or self.grad_evals,
                    wall_s=self.train_s / len(self.runs),  # the run's share of the stack's time
                    diverged=self.diverged[r] is not None,
                )
            )
        return rows


def _blocks(runs: list[tuple[DictConfig, int]]) -> list[tuple[DictConfig, slice]]:
    """The consecutive rows of each optimizer in runs (ordered optimizer by optimizer)."""
    blocks, start = [], 0
    for end in range(1, len(runs) + 1):
        if end == len(runs) or runs[end][0] is not runs[start][0]:
            blocks.append((runs[start][0], slice(start, end)))
            start = end
    return blocks


class Run(Progress):
    """One (optimizer, seed) run: its own model, and its own optimizer unless the runs of
    its (element-wise) optimizer share one (OptimizerGroup). Each run computes with its own
    tensors through the same kernel calls whatever trains beside it, so its numbers depend
    on its own weights, batches and optimizer alone."""

    def __init__(
        self,
        optimizer_cfg: DictConfig,
        seed: int,
        cfg: DictConfig,
        device: torch.device,
        own_optimizer: bool = True,
    ):
        self.optimizer_cfg, self.seed = optimizer_cfg, seed
        self.runs = [(optimizer_cfg, seed)]
        self.model = models.build_model(cfg.model, cfg.dataset, stream_seed(seed, "init"))
        # Convolution weights in channels-last layout: oneDNN's fast path on the CPU, about
        # 1.8x faster for the LeNet than the default layout (a no-op for the ffnn). Not for
        # optimizers that may flatten a gradient with view(-1) (L-BFGS does): that needs
        # the default layout.
        elementwise = optimizer_cfg.get("elementwise", False)
        memory_format = torch.channels_last if elementwise else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        self.optimizer = None  # stepped by its OptimizerGroup
        if own_optimizer:
            self.optimizer = optimizers.build_optimizer(optimizer_cfg, self.model.parameters())
        # torch.optim's step(closure) evaluates the loss itself (L-BFGS several times);
        # a user's optimizer whose step takes no closure gets the gradient first.
        self.step_takes_closure = self.optimizer is not None and (
            "closure" in inspect.signature(self.optimizer.step).parameters
        )
        # the ffnn's forward and backward written out, where no optimizer needs autograd's
        # graph (a differentiable optimizer does)
        self.written_out = type(self.model) is models.FFNN and not optimizer_cfg.get(
            "differentiable", False
        )
        self.start_counting(1, device)
        self.diverged = False  # set at the first evaluation that sees a NaN or infinite loss

    def step(self, tensors: data.TensorData, batches: dict[int, torch.Tensor | None]) -> None:
        """One optimizer step; for a run of an OptimizerGroup, its gradient only."""
        if self.diverged:
            self.model.zero_grad(set_to_none=True)  # its group's optimizer skips it
            return
        start = time.perf_counter()
        index = batches[self.seed]
        if index is None:
            x, y = tensors.train_x, tensors.train_y
        else:  # index_select: about 2.5x faster than x[index] for a [N, C, H, W] tensor
            x, y = tensors.train_x.index_select(0, index), tensors.train_y.index_select(0, index)

        def closure() -> torch.Tensor:
            self.grad_evals += 1
            if self.written_out:
                return models.ffnn_loss_and_grads(self.model, x, y)
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            return loss

        if self.optimizer is None:
            loss = closure()
        elif self.step_takes_closure:
            loss = self.optimizer.step(closure)  # the loss before this step's update
        else:
            loss = closure()
            self.optimizer.step()
        loss = loss.detach()
        self.loss_sum += loss  # stays on the device: no host synchronisation per step
        self.loss_count += 1
        self.last_loss = loss
        self.train_s += time.perf_counter() - start

    def state_dict(self) -> dict:
        optimizer = self.optimizer.state_dict() if self.optimizer is not None else None
        return {"model": self.model.state_dict(), "optimizer": optimizer, **self.counters()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_counters(state)

    def evaluation_rows(self, step: int, tensors: data.TensorData, test_batch_size: int):
        """A NaN or infinite training loss since the last evaluation marks the run diverged:
        it trains no further, and this and every later row carry no metrics."""
        measured = (math.nan,) * 4
        if not self.diverged:
            train_loss = (self.loss_sum / self.loss_count).item()
            self.diverged = not math.isfinite(train_loss)
            if not self.diverged:
                test = evaluate(self.model, tensors.test_x, tensors.test_y, test_batch_size)
                measured = (train_loss, self.last_loss.item(), *test)
        self.loss_sum.zero_()
        self.loss_count = 0
        row = run_row(
            self.optimizer_cfg,
            self.seed,
            step=step,
            **dict(zip(METRICS, measured, strict=True)),
            grad_evals=self.grad_evals,
            wall_s=self.train_s,
            diverged=self.diverged,
        )
        return [row]


class OptimizerGroup:
    """The runs of one element-wise optimizer, stepped by one optimizer over all their
    parameters: one call a step instead of one a run.

    Exact: an element-wise update of a tensor depends on that tensor's own gradient and
    state alone, and the group's optimizer updates each run's tensors as separate tensors,
    with the same kernel whatever the number of runs (optimizers.implementation: fused where
    torch.optim has a fused kernel, else foreach, which updates tensor by tensor on the
    CPU). A lone run of such an optimizer is a group of one."""

    def __init__(self, optimizer_cfg: DictConfig, runs: list[Run]):
        self.runs = runs
        params = [p for run in runs for p in run.model.parameters()]
        self.implementation = optimizers.implementation(optimizer_cfg)
        self.optimizer = optimizers.build_optimizer(
            optimizer_cfg, params, implementation=self.implementation
        )

    def step(self) -> None:
        start = time.perf_counter()
        self.optimizer.step()  # a diverged run's parameters have no gradient: skipped
        share = (time.perf_counter() - start) / len(self.runs)
        for run in self.runs:
            run.train_s += share


class Workers:
    """The threads that train a job's runs on the CPU.

    Every kernel runs on one thread (torch.set_num_threads(1) in each worker), and the
    runs are spread over the workers instead. So a run's numbers do not depend on the
    number of threads either: whichever worker computes it, it goes through the same
    single-threaded kernels. On a GPU the tasks run one after another in the calling
    thread."""

    def __init__(self, count: int):
        self.count = count
        self.pool = None
        if count > 1:
            self.pool = ThreadPoolExecutor(count, initializer=torch.set_num_threads, initargs=(1,))

    def map(self, tasks: list) -> list:
        """Call every task (a function of no argument); their results in order."""
        if self.pool is None:
            return [task() for task in tasks]
        # one chunk of tasks a worker (a task queued on its own costs more than a small step)
        chunks = [tasks[k :: self.count] for k in range(self.count)]
        done = list(self.pool.map(lambda chunk: [task() for task in chunk], chunks))
        return [done[i % self.count][i // self.count] for i in range(len(tasks))]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction correct) over the whole test set."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(dim=1) == target).sum()
    model.train()
    return loss_sum.item() / len(x), correct.item() / len(x)


def should_stack(cfg: DictConfig, optimizer_cfg: DictConfig, device: torch.device) -> bool:
    """Whether a run trains in a Stack (one batched model) or as a Run.

    stack_runs=auto stacks the element-wise optimizers' runs on a GPU, where one batched
    model keeps it busy; on the CPU every run trains as a Run, bit for bit the same
    whatever trains beside it (see Workers)."""
    mode = cfg.stack_runs.value if hasattr(cfg.stack_runs, "value") else cfg.stack_runs
    if mode == "never" or not optimizer_cfg.get("elementwise", False):
        return False
    if cfg.model.get("sparse_input", False):  # EmbeddingBag's sparse gradients: no vmap
        return False
    return mode == "always" or device.type == "cuda"


def in_group(cfg: DictConfig, optimizer_cfg: DictConfig) -> bool:
    """Whether a Run's optimizer is shared with the other runs of its optimizer config."""
    return optimizer_cfg.get("elementwise", False) and not cfg.model.get("sparse_input", False)


def worker_count(cfg: DictConfig, device: torch.device) -> int:
    """Threads that train runs side by side: `threads`, else torch's default (the physical
    cores); one on a GPU."""
    if device.type == "cuda":
        return 1
    return cfg.threads if cfg.threads is not None else torch.get_num_threads()


def layout(cfg: DictConfig, optimizer_cfgs: list[DictConfig]) -> dict:
    """What decides a job's last digits besides its config, for config.yaml: the device,
    torch's CPU capability (the vector instructions its kernels use), the worker threads
    and the threads per kernel, and which kernel updates each optimizer's tensors."""
    device = resolve_device(cfg.device.value if hasattr(cfg.device, "value") else cfg.device)
    kernels = {}
    for optimizer_cfg in optimizer_cfgs:
        grouped = should_stack(cfg, optimizer_cfg, device) or in_group(cfg, optimizer_cfg)
        kernels[optimizer_cfg.name] = (
            optimizers.implementation(optimizer_cfg) if grouped else "default"
        )
    return {
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "worker_threads": worker_count(cfg, device),
        "threads_per_kernel": 1 if device.type == "cpu" else None,
        "optimizer_kernels": kernels,
    }


def build_trainers(
    cfg: DictConfig, pairs: list[tuple[DictConfig, int]], device: torch.device
) -> tuple[list, list[OptimizerGroup]]:
    """The trainers of a job's (optimizer config, seed) pairs: one Stack of the stacked
    pairs, a Run per other pair; and the OptimizerGroups of the grouped Runs."""
    stacked = [(o, s) for o, s in pairs if should_stack(cfg, o, device)]
    alone = [(o, s) for o, s in pairs if not should_stack(cfg, o, device)]
    trainers: list = [Stack(stacked, cfg, device)] if stacked else []
    groups = []
    for optimizer_cfg, block in _blocks(alone):
        grouped = in_group(cfg, optimizer_cfg)
        runs = [
            Run(optimizer_cfg, seed, cfg, device, own_optimizer=not grouped)
            for _, seed in alone[block]
        ]
        trainers += runs
        if grouped:
            groups.append(OptimizerGroup(optimizer_cfg, runs))
    return trainers, groups


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the training state atomically; serialised in memory first, so that a full disk
    is an OSError that says so (torch.save's own stream error does not)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    results.atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The training state saved at path; None when there is none. A checkpoint that cannot
    be read (damaged, truncated, not optbench's) is set aside beside it, never loaded
    unsafely, and training starts from the beginning."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "job" not in state:
            raise ValueError("not an optbench checkpoint")
        return state
    except Exception as error:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        log.warning(
            "%s cannot be read (%s); it is set aside as %s, and training starts from the "
            "beginning.",
            path,
            type(error).__name__,
            aside.name,
        )
        return None


def train(
    cfg: DictConfig,
    optimizer_cfgs: list[DictConfig],
    progress: bool = True,
    *,
    skip: frozenset = frozenset(),
    checkpoint: Path | None = None,
) -> pd.DataFrame:
    """Train every (optimizer, seed) pair on cfg's protocol; one row per evaluation point.

    Columns: experiment, dataset, model, optimizer, lr, seed, step, epoch, train_loss (mean
    mini-batch loss since the previous evaluation), last_batch_loss, test_loss,
    test_accuracy (fraction in [0, 1]), grad_evals (forward + backward passes so far),
    wall_s (seconds of this run's training so far, evaluation excluded; a stacked run's
    share of its stack's time), diverged.

    Pairs whose config.run_key is in `skip` are not trained. With `checkpoint`, the whole
    training state is saved there (atomically) at every evaluation point, and a checkpoint
    left there by this same job is resumed from: the rows come out as if never stopped.
    """
    device = resolve_device(cfg.device.value if hasattr(cfg.device, "value") else cfg.device)
    workers = Workers(worker_count(cfg, device))
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # every kernel on one thread: see Workers
    try:
        return _train(cfg, optimizer_cfgs, device, workers, progress, skip, checkpoint)
    finally:
        workers.close()
        torch.set_num_threads(threads_before)


def _train(cfg, optimizer_cfgs, device, workers, progress, skip, checkpoint) -> pd.DataFrame:
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32  # torch's default: off
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32  # torch's default: on
    tensors = data.load(cfg.dataset, data.resolve_data_dir(cfg.data_dir), device)
    n_train = len(tensors.train_x)
    schedule = make_schedule(cfg.train, n_train)
    pairs = [
        (optimizer_cfg, seed)
        for optimizer_cfg in optimizer_cfgs
        for seed in seed_list(cfg.seeds)
        if run_key(optimizer_cfg.name, hyperparameters(optimizer_cfg), seed) not in skip
    ]
    trainers, groups = build_trainers(cfg, pairs, device)
    seeds = sorted({seed for _, seed in pairs})
    orders = {seed: DataOrder(seed, n_train, schedule.batch_size, device) for seed in seeds}
    position = {(id(o), s): i for i, (o, s) in enumerate(pairs)}  # rows in (optimizer, seed) order
    job = {  # a checkpoint is resumed only by the job that wrote it
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint(cfg),
        "runs": [run_key(o.name, hyperparameters(o), s) for o, s in pairs],
        "trainers": [(type(trainer).__name__, len(trainer.runs)) for trainer in trainers],
        "groups": [len(group.runs) for group in groups],
    }
    rows, done_steps = [], 0
    state = load_checkpoint(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        if state["job"] == job:
            for trainer, trainer_state in zip(trainers, state["trainers"], strict=True):
                trainer.load_state_dict(trainer_state)
            for group, group_state in zip(groups, state["groups"], strict=True):
                group.optimizer.load_state_dict(group_state)
            for seed, order in orders.items():
                order.load_state_dict(state["orders"][seed])
            rows, done_steps = state["rows"], state["step"]
            log.info("Resuming from %s at step %d", checkpoint, done_steps)
        else:
            log.info("%s belongs to another job; training from the start", checkpoint)
    context = {
        "experiment": cfg.experiment_name,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "fingerprint": job["fingerprint"],
    }
    bar = tqdm(
        total=schedule.total_steps * len(pairs),
        initial=done_steps * len(pairs),
        desc=f"{len(pairs)} runs",
        unit="step",
        disable=None if progress else True,  # None: no bar when output is not a terminal
        dynamic_ncols=True,
        # the accuracy first (in desc), so a narrow terminal still shows it
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    evaluations = iter([step for step in schedule.eval_steps if step > done_steps])
    next_eval = next(evaluations, None)
    for step in range(done_steps + 1, schedule.total_steps + 1):
        batches = {seed: order.next_batch() for seed, order in orders.items()}
        workers.map([partial(trainer.step, tensors, batches) for trainer in trainers])
        workers.map([group.step for group in groups])
        bar.update(len(pairs))
        if step != next_eval:
            continue
        epoch = step / schedule.steps_per_epoch
        evaluated = [{}] * len(pairs)
        trainer_rows = workers.map(
            [
                partial(trainer.evaluation_rows, step, tensors, cfg.train.test_batch_size)
                for trainer in trainers
            ]
        )
        for trainer, its_rows in zip(trainers, trainer_rows, strict=True):
            for (optimizer_cfg, seed), row in zip(trainer.runs, its_rows, strict=True):
                evaluated[position[(id(optimizer_cfg), seed)]] = row
        rows += [{**context, **row, "epoch": epoch} for row in evaluated]
        if checkpoint is not None:
            state = {
                "job": job,
                "step": step,
                "rows": rows,
                "trainers": [trainer.state_dict() for trainer in trainers],
                "groups": [group.optimizer.state_dict() for group in groups],
                "orders": {seed: order.state_dict() for seed, order in orders.items()},
            }
            save_checkpoint(checkpoint, state)
        healthy = [r["test_accuracy"] for r in evaluated if not r["diverged"]]
        mean_accuracy = sum(healthy) / len(healthy) if healthy else math.nan
        diverged = len(pairs) - len(healthy)
        bar.set_description_str(
            f"{len(pairs)} runs, accuracy {mean_accuracy:.4f}, {diverged} diverged", refresh=False
        )
        if bar.disable:  # no progress bar (output is not a terminal): one log line instead
            log.info(
                "step %d/%d: mean test accuracy %.4f over %d runs (%d diverged)",
                step,
                schedule.total_steps,
                mean_accuracy,
                len(healthy),
                diverged,
            )
        next_eval = next(evaluations, None)
    bar.close()
    return pd.DataFrame(rows)
