"""The training engine: every (optimizer, seed) run of a job advances in one step loop.

The runs of element-wise optimizers train together as one batched model (`Stack`); the
others, each on its own (`Run`). Both give a run the same numbers whatever trains beside it.

A run's randomness comes from its seed alone: the initial weights from one stream, the
order of the mini-batches from another. So a seed gives the same run whatever other seeds
or optimizers train beside it, and two optimizers with the same seed start from the same
weights and see the same batches (their comparison is paired).

Evaluation points produce one flat row per run (a dict); `train` returns them as a DataFrame.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from optbench import data, models, optimizers, results
from optbench.config import ConfigError, fingerprint, seed_list

log = logging.getLogger("optbench")

# The layout of the trainers' states in a checkpoint; a checkpoint of another layout (an
# earlier optbench) is not resumed.
CHECKPOINT_FORMAT = 2

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
    return {"optimizer": optimizer_cfg.name, "lr": lr, "seed": seed, **measured}


class Stack(Progress):
    """Runs of element-wise optimizers trained as one batched model.

    Every parameter is one tensor with a leading run dimension, [R, ...], stacked from the
    runs' own initial models, and one batched model computes all R runs' losses and
    gradients at once (models.StackedFFNN for the ffnn, written out by hand; vmap for the
    others). Each run gets exactly its own gradient.

    Each optimizer owns a block of rows: its parameters are views of those rows, so
    torch.optim updates the stacked tensors in place. That is exact only for optimizers
    whose update is element-wise (optimizer config `elementwise: true`); the others train
    as `Run`s. Where the optimizer has a fused kernel (optimizers.can_fuse) the stack uses
    it, and gives it each run's rows as tensors of their own: the kernel splits every
    tensor it is given into vector lanes and threads, so it then splits a run's numbers as
    it would for the run alone. A run gives the same numbers in a stack of any size, alone
    included (tests/test_engine.py checks this bit for bit on the CPU).
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
        # per optimizer: (optimizer, its views of the parameters, each view's (i, rows))
        self.optimizers = []
        for optimizer_cfg, block in _blocks(runs):
            fused = optimizers.can_fuse(optimizer_cfg)
            rows = range(block.start, block.stop) if fused else [block]  # see the docstring
            parts = [(i, r) for r in rows for i in range(len(params))]
            views = [params[i].detach()[r] for i, r in parts]
            optimizer = optimizers.build_optimizer(optimizer_cfg, views, fused=fused)
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
    """One (optimizer, seed) run trained on its own: for optimizers that are not
    element-wise (L-BFGS, a user's optimizer that has not declared itself element-wise),
    models that cannot be stacked (the sparse-input ffnn), the LeNet on the CPU, and
    stack_runs=never (see should_stack)."""

    def __init__(self, optimizer_cfg: DictConfig, seed: int, cfg: DictConfig, device: torch.device):
        self.optimizer_cfg, self.seed = optimizer_cfg, seed
        self.runs = [(optimizer_cfg, seed)]
        self.model = models.build_model(cfg.model, cfg.dataset, stream_seed(seed, "init"))
        # Convolution weights in channels-last layout: oneDNN's fast path on the CPU, about
        # 1.8x faster for the LeNet than the default layout (a no-op for the ffnn).
        self.model.to(device, memory_format=torch.channels_last)
        self.optimizer = optimizers.build_optimizer(optimizer_cfg, self.model.parameters())
        # torch.optim's step(closure) evaluates the loss itself (L-BFGS several times);
        # a user's optimizer whose step takes no closure gets the gradient first.
        self.step_takes_closure = "closure" in inspect.signature(self.optimizer.step).parameters
        self.start_counting(1, device)
        self.diverged = False  # set at the first evaluation that sees a NaN or infinite loss

    def step(self, tensors: data.TensorData, batches: dict[int, torch.Tensor | None]) -> None:
        if self.diverged:
            return
        start = time.perf_counter()
        index = batches[self.seed]
        if index is None:
            x, y = tensors.train_x, tensors.train_y
        else:  # index_select: about 2.5x faster than x[index] for a [N, C, H, W] tensor
            x, y = tensors.train_x.index_select(0, index), tensors.train_y.index_select(0, index)

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.grad_evals += 1
            return loss

        if self.step_takes_closure:
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
        model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        return {"model": model, "optimizer": optimizer, **self.counters()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
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
    """Whether a run trains in a stack (see Stack) or on its own (Run).

    stack_runs=auto stacks element-wise optimizers, except the LeNet on the CPU: there a
    grouped convolution over stacked runs is slower than one channels-last convolution
    per run (measured 21-26 ms against 16 ms per run-step, scripts/bench.py's notes).
    """
    mode = cfg.stack_runs.value if hasattr(cfg.stack_runs, "value") else cfg.stack_runs
    if mode == "never" or not optimizer_cfg.get("elementwise", False):
        return False
    if cfg.model.get("sparse_input", False):  # EmbeddingBag's sparse gradients: no vmap
        return False
    return mode == "always" or not (cfg.model.name == "lenet" and device.type == "cpu")


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

    Pairs whose results.run_key is in `skip` are not trained. With `checkpoint`, the whole
    training state is saved there (atomically) at every evaluation point, and a checkpoint
    left there by this same job is resumed from: the rows come out as if never stopped.
    """
    device = resolve_device(cfg.device.value if hasattr(cfg.device, "value") else cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32  # torch's default: off
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32  # torch's default: on
    tensors = data.load(cfg.dataset, data.resolve_data_dir(cfg.data_dir), device)
    n_train = len(tensors.train_x)
    schedule = make_schedule(cfg.train, n_train)
    pairs = [
        (optimizer_cfg, seed)
        for optimizer_cfg in optimizer_cfgs
        for seed in seed_list(cfg.seeds)
        if results.run_key(optimizer_cfg.name, optimizer_cfg.get("lr"), seed) not in skip
    ]
    stacks = {id(o): should_stack(cfg, o, device) for o in optimizer_cfgs}
    stacked = [(o, s) for o, s in pairs if stacks[id(o)]]
    trainers = [Stack(stacked, cfg, device)] if stacked else []
    trainers += [Run(o, s, cfg, device) for o, s in pairs if not stacks[id(o)]]
    seeds = sorted({seed for _, seed in pairs})
    orders = {seed: DataOrder(seed, n_train, schedule.batch_size, device) for seed in seeds}
    position = {(id(o), s): i for i, (o, s) in enumerate(pairs)}  # rows in (optimizer, seed) order
    job = {  # a checkpoint is resumed only by the job that wrote it
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint(cfg),
        "runs": [results.run_key(o.name, o.get("lr"), s) for o, s in pairs],
        "trainers": [(type(trainer).__name__, len(trainer.runs)) for trainer in trainers],
    }
    rows, done_steps = [], 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["job"] == job:
            for trainer, trainer_state in zip(trainers, state["trainers"], strict=True):
                trainer.load_state_dict(trainer_state)
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
        desc=f"{cfg.experiment_name}: {len(pairs)} runs",
        unit="step",
        disable=None if progress else True,  # None: no bar when output is not a terminal
        dynamic_ncols=True,
    )
    evaluations = iter([step for step in schedule.eval_steps if step > done_steps])
    next_eval = next(evaluations, None)
    for step in range(done_steps + 1, schedule.total_steps + 1):
        batches = {seed: order.next_batch() for seed, order in orders.items()}
        for trainer in trainers:
            trainer.step(tensors, batches)
        bar.update(len(pairs))
        if step != next_eval:
            continue
        epoch = step / schedule.steps_per_epoch
        evaluated = [{}] * len(pairs)
        for trainer in trainers:
            trainer_rows = trainer.evaluation_rows(step, tensors, cfg.train.test_batch_size)
            for (optimizer_cfg, seed), row in zip(trainer.runs, trainer_rows, strict=True):
                evaluated[position[(id(optimizer_cfg), seed)]] = row
        rows += [{**context, **row, "epoch": epoch} for row in evaluated]
        if checkpoint is not None:
            state = {
                "job": job,
                "step": step,
                "rows": rows,
                "trainers": [trainer.state_dict() for trainer in trainers],
                "orders": {seed: order.state_dict() for seed, order in orders.items()},
            }
            results.atomic_write(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
        healthy = [r["test_accuracy"] for r in evaluated if not r["diverged"]]
        mean_accuracy = sum(healthy) / len(healthy) if healthy else math.nan
        diverged = len(pairs) - len(healthy)
        bar.set_postfix(step=step, test_accuracy=f"{mean_accuracy:.4f}", diverged=diverged)
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
