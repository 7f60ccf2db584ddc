"""What trains runs: a RunTrainer (one run, its own model; stack.StackTrainer trains runs of
element-wise optimizers as one batched model), and the OptimizerGroup that steps the runs of
one element-wise optimizer with one call (workers.Workers spreads trainers over the CPU's
cores). Every trainer keeps the same per-run counters and turns them into rows the same way
(`Trainer.evaluation_rows`): one evaluation path and one representation of divergence,
`diverged_at`, for lone and stacked runs alike."""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from optbench import models
from optbench.data.in_memory import DatasetTensors
from optbench.optimizers import build
from optbench.plan import OptimizerSpec, RunSpec

# What an evaluation measures of a run (NaN once it has diverged)
EVALUATED = ("train_loss", "last_batch_loss", "test_loss", "test_accuracy")
# measured on the validation set, where the dataset holds one out (dataset.validation_size)
VALIDATION_METRICS = ("validation_loss", "validation_accuracy")

# A run has diverged once its mean training loss since the previous evaluation is NaN,
# infinite or above this bound. Cross-entropy is at least the margin by which the top logit
# exceeds the true class's, so such a loss means logits some 2^24 apart, where float32 can
# no longer resolve a difference of 1 between two logits: the scale on which classes are
# told apart is lost. Recovering runs stay far below it (RMSprop at lr 1 on wizard_ffnn:
# 1105 over its first epoch, 13,198 over its first 50 steps, then about 2.4); SGD at lr 1000
# passes it within 10 steps (2.5e11 and more): docs/statistics.md.
DIVERGED_LOSS = 2.0**24


class Batches:
    """This step's mini-batch of each seed: its indices (None: the whole set), and its
    examples, gathered once for every run of the seed (none of ours writes its inputs; a
    user's model gets a copy of its own)."""

    def __init__(self, tensors: DatasetTensors, indices: dict[int, torch.Tensor | None]):
        self.tensors, self.indices = tensors, indices
        self.gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, seed: int) -> torch.Tensor | None:
        return self.indices[seed]

    def examples(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The seed's inputs and labels; two threads asking at once gather the same."""
        found = self.gathered.get(seed)
        if found is None:
            index, tensors = self.indices[seed], self.tensors
            if index is None:
                found = tensors.train_x, tensors.train_y
            else:  # index_select: x[index] takes a slower path for a [N, C, H, W] tensor
                found = (
                    tensors.train_x.index_select(0, index),
                    tensors.train_y.index_select(0, index),
                )
            self.gathered[seed] = found
        return found


# held by a step that draws from the global random generators (RunTrainer.seeded)
_GLOBAL_GENERATORS = threading.Lock()
# backward(create_graph=True), for Hessian-vector products: each step sets the gradients
# to None, which ends the reference cycle torch warns of
warnings.filterwarnings("ignore", "Using backward.. with create_graph=True")


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream ("init", "data_order") of a run."""
    digest = hashlib.sha256(f"optbench/{stream}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def has_diverged(mean_train_loss: float) -> bool:
    """Whether a run's mean training loss since the previous evaluation marks it diverged:
    NaN, infinite, or above DIVERGED_LOSS."""
    return not math.isfinite(mean_train_loss) or mean_train_loss > DIVERGED_LOSS


def run_row(run: RunSpec, **measured) -> dict:
    """A row of runs.csv, less the experiment context: which run (optimizer, lr,
    hyperparameters, seed), then its measurements."""
    spec = run.optimizer
    identity = {"optimizer": spec.name, "lr": spec.lr, "hyperparameters": spec.hyperparameters}
    return {**identity, "seed": run.seed, **measured}


class Trainer:
    """What every trainer accumulates for its runs as they train (each trainer's step
    counts its batch losses, time and gradient evaluations). With the weights and optimizer
    states, a checkpoint holds these counters, so that a resumed run continues exactly
    where it stopped."""

    COUNTERS = ("loss_sum", "loss_count", "last_loss", "grad_evals", "train_s", "diverged_at")

    def __init__(self, runs: list[RunSpec], device: torch.device):
        self.runs = runs
        self.loss_sum = torch.zeros(len(runs), device=device)  # batch losses since last evaluation
        self.loss_count = 0
        self.last_loss = torch.full((len(runs),), math.nan, device=device)
        self.grad_evals = 0  # forward + backward passes so far
        self.train_s = 0.0  # seconds spent in these runs' steps
        self.clock = StepClock(device)
        # per run: None, or its grad_evals at the evaluation that found its training loss
        # NaN, infinite or above DIVERGED_LOSS, or its test loss NaN or infinite; from then
        # on its rows carry no metrics (a row not diverged has every metric) and it counts
        # no more steps
        self.diverged_at: list[int | None] = [None] * len(runs)

    def test(self, tensors: DatasetTensors, batch_size: int) -> list[tuple[float, float]]:
        """Each run's (mean cross-entropy, accuracy) over the whole test set."""
        raise NotImplementedError

    def evaluation_rows(self, step: int, tensors: DatasetTensors, test_batch_size: int) -> list:
        """One row per run at this evaluation step; the counters start again."""
        self.train_s += self.clock.collect()  # a GPU's steps, timed by CUDA events
        train_loss = (self.loss_sum / max(self.loss_count, 1)).tolist()  # one host sync
        last_loss = self.last_loss.tolist()
        self.loss_sum.zero_()
        self.loss_count = 0
        for r, loss in enumerate(train_loss):  # checked here, on the host: no cost per step
            if self.diverged_at[r] is None and has_diverged(loss):
                self.diverged_at[r] = self.grad_evals
        tests = self.test(tensors, test_batch_size)
        for r, (test_loss, _) in enumerate(tests):  # weights blown up by the last update
            if self.diverged_at[r] is None and not math.isfinite(test_loss):
                self.diverged_at[r] = self.grad_evals
        # the validation set (held out of the training set) through the same test pass
        validations = None
        if tensors.validation_x is not None:
            validations = self.test(tensors.validation(), test_batch_size)
        rows = []
        for r, run in enumerate(self.runs):
            diverged = self.diverged_at[r] is not None
            measured = (train_loss[r], last_loss[r], *tests[r])
            validation = {}
            if validations is not None:
                values = (math.nan,) * 2 if diverged else validations[r]
                validation = dict(zip(VALIDATION_METRICS, values, strict=True))
            rows.append(
                run_row(
                    run,
                    step=step,
                    **dict(zip(EVALUATED, (math.nan,) * 4 if diverged else measured, strict=True)),
                    **validation,
                    grad_evals=self.diverged_at[r] if diverged else self.grad_evals,
                    wall_s=self.train_s / len(self.runs),  # a stacked run's share of the time
                    diverged=diverged,
                )
            )
        return rows

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in self.COUNTERS}

    def load_counters(self, state: dict) -> None:
        for name in self.COUNTERS:
            value = state[name]
            if isinstance(value, torch.Tensor):  # loaded on the CPU: to this trainer's device
                value = value.to(getattr(self, name).device)
            setattr(self, name, value)


class RunTrainer(Trainer):
    """One (optimizer, seed) run: its own model, and its own optimizer unless the runs of
    its (element-wise) optimizer share one (OptimizerGroup). Each run computes with its own
    tensors through the same kernel calls whatever trains beside it, so its numbers depend
    on its own weights, batches and optimizer alone."""

    def __init__(
        self,
        run: RunSpec,
        model: dict,
        dataset: dict,
        device: torch.device,
        *,
        own_optimizer: bool = True,
    ):
        super().__init__([run], device)
        self.seed = run.seed
        self.model = models.build_model(model, dataset, stream_seed(run.seed, "init"))
        self.traits = traits = run.optimizer.traits
        # Convolution weights in channels-last layout where the optimizer allows it
        # (Traits.channels_last): oneDNN's fast path on the CPU (a no-op for the ffnn).
        memory_format = torch.channels_last if traits.channels_last else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        self.device = device
        # The optimizers that draw random numbers draw them from a global generator:
        # seeded(). A user's model may too (dropout draws from torch's): its steps are
        # seeded as well, so that its runs stay independent and resume exactly.
        self.draws_random = traits.draws_random or models.is_custom(model)
        self.optimizer = None  # stepped by its OptimizerGroup
        if own_optimizer:
            with self.seeded("init") if self.draws_random else contextlib.nullcontext():
                self.optimizer = build.build_optimizer(run.optimizer.config, self.model)
        # the ffnn's forward and backward written out, where no optimizer needs autograd's
        # graph (a differentiable optimizer does, and so do Hessian-vector products)
        self.written_out = type(self.model) is models.FFNN and not traits.needs_graph
        self.own_inputs = models.is_custom(model)

    def step(self, tensors: DatasetTensors, batches: Batches) -> None:
        """One step of the run, in this order: its batch; forward, loss and backward (the
        closure: the ffnn's pass written out, else autograd); the optimizer's update (for
        a run of an OptimizerGroup, none: the group updates it next); the counting of the
        batch loss and the step's time. A diverged run takes no more steps."""
        if self.diverged_at[0] is not None:
            self.model.zero_grad(set_to_none=True)  # its group's optimizer skips it
            return
        start = self.clock.start()
        x, y = batches.examples(self.seed)
        if self.own_inputs and batches[self.seed] is not None:  # a user's model may write
            x = x.clone()  # into its inputs: a mini-batch of its own, as each run had

        def closure() -> torch.Tensor:
            self.grad_evals += 1
            if self.written_out:
                return models.ffnn_loss_and_grads(self.model, x, y)
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward(create_graph=self.traits.create_graph)
            return loss

        with self.seeded(self.grad_evals) if self.draws_random else contextlib.nullcontext():
            if self.optimizer is None:
                loss = closure()
            elif self.traits.step_takes_closure:  # torch.optim's: it evaluates the loss itself
                loss = self.optimizer.step(closure)  # the loss before this step's update
            else:
                loss = closure()
                self.optimizer.step()
        self.train_s += self.clock.stop(start)
        batch_loss = loss.detach().view(1)  # stays on the device: no host sync per step
        self.loss_sum += batch_loss
        self.loss_count += 1
        self.last_loss = batch_loss

    @contextlib.contextmanager
    def seeded(self, moment: int | str):
        """For an optimizer that draws from a global random generator (torch's, NumPy's,
        Python's), and a user's model (dropout draws from torch's): all three seeded from
        this run's seed and the moment (its construction, "init", or a step, by the
        gradient evaluations before it), and restored after. One such run at a time holds
        them, forward and backward pass included (its runs
        train one after another; other threads' runs, which draw from none of them, train
        meanwhile). So the run's draws are its own, whatever trains beside it, and a resumed
        run draws the same."""
        devices = [self.device] if self.device.type == "cuda" else []
        seed = stream_seed(self.seed, f"optimizer/{moment}")
        with _GLOBAL_GENERATORS, torch.random.fork_rng(devices=devices):
            numpy_state, python_state = np.random.get_state(), random.getstate()
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                yield
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)

    def test(self, tensors: DatasetTensors, batch_size: int) -> list[tuple[float, float]]:
        if self.diverged_at[0] is not None:
            return [(math.nan, math.nan)]
        if self.optimizer is None or not self.traits.has_modes:
            return [evaluate(self.model, tensors.test_x, tensors.test_y, batch_size)]
        # eval() and train() move the weights there and back, which rounds: training goes
        # on from the exact weights it had, however often it is evaluated
        weights = [p.detach().clone() for p in self.model.parameters()]
        self.optimizer.eval()
        try:
            return [evaluate(self.model, tensors.test_x, tensors.test_y, batch_size)]
        finally:
            self.optimizer.train()
            with torch.no_grad():
                for parameter, weight in zip(self.model.parameters(), weights, strict=True):
                    parameter.copy_(weight)

    def optimizers_and_specs(self) -> list[tuple[torch.optim.Optimizer, OptimizerSpec]]:
        """Its own optimizer (none when an OptimizerGroup steps it), with its setting."""
        return [] if self.optimizer is None else [(self.optimizer, self.runs[0].optimizer)]

    def state_dict(self) -> dict:
        optimizer = self.optimizer.state_dict() if self.optimizer is not None else None
        return {"model": self.model.state_dict(), "optimizer": optimizer, **self.counters()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_counters(state)


def rows_by_optimizer(runs: list[RunSpec]) -> dict[OptimizerSpec, list[int]]:
    """The positions of each optimizer setting's runs in runs, settings in first-seen order."""
    rows: dict[OptimizerSpec, list[int]] = {}
    for position, run in enumerate(runs):
        rows.setdefault(run.optimizer, []).append(position)
    return rows


class OptimizerGroup:
    """The runs of one element-wise optimizer, stepped by one optimizer over all their
    parameters: one call a step instead of one a run.

    Exact: an element-wise update of a tensor depends on that tensor's own gradient and
    state alone, and the group's optimizer updates each run's tensors as separate tensors,
    with the same kernel whatever the number of runs (build.implementation: fused where
    torch.optim has a fused kernel, else foreach, which updates tensor by tensor on the
    CPU). A lone run of such an optimizer is a group of one."""

    def __init__(self, spec: OptimizerSpec, trainers: list[RunTrainer]):
        self.spec, self.trainers = spec, trainers
        params = [p for trainer in trainers for p in trainer.model.parameters()]
        self.optimizer = build.build_optimizer(
            spec.config, params, build.implementation(spec.config, trainers[0].device.type)
        )

    def step(self) -> None:
        """The update of every run of the group, once each RunTrainer.step has left its
        gradient; the step's time shared among the runs."""
        clock = self.trainers[0].clock
        start = clock.start()
        self.optimizer.step()  # a diverged run's parameters have no gradient: skipped
        share = clock.stop(start, shares=len(self.trainers))
        for trainer in self.trainers:
            trainer.train_s += share
        if clock.events:  # on a GPU: each trainer its share, read at the evaluation
            for trainer in self.trainers[1:]:
                trainer.clock.pending.append(clock.pending[-1])


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


class StepClock:
    """The seconds of a trainer's steps. On the CPU a step's kernels have run when it
    returns, so perf_counter around it is its time. On a GPU a step only launches its
    kernels, and perf_counter would time the launches: a CUDA event is recorded before and
    after each step instead, and their elapsed times are read at the next evaluation, which
    synchronises anyway, so the timing adds no synchronisation of its own."""

    def __init__(self, device: torch.device):
        self.events = torch.device(device).type == "cuda"
        self.pending: list[tuple[object, object, float]] = []  # (start, end, share)

    def start(self):
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start, shares: int = 1) -> float:
        """The step's seconds, divided into `shares` (0 on a GPU: read by collect())."""
        if not self.events:
            return (time.perf_counter() - start) / shares
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending.append((start, end, 1 / shares))
        return 0.0

    def collect(self) -> float:
        """The seconds of the GPU steps recorded since the last call (0 on the CPU)."""
        if not self.pending:
            return 0.0
        self.pending[-1][1].synchronize()
        seconds = sum(s.elapsed_time(e) * share for s, e, share in self.pending) / 1000
        self.pending.clear()
        return seconds
