"""StackTrainer: the runs of element-wise optimizers trained as one batched model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optbench import models
from optbench.data.in_memory import DatasetTensors
from optbench.optimizers import build
from optbench.plan import OptimizerSpec, RunSpec
from optbench.training.trainers import Batches, Trainer, rows_by_optimizer, stream_seed

# The memory a stacked evaluation's widest layer output may take: a test batch of n examples
# gives the LeNet's first convolution [n, R x 20, 24, 24] float32 for R runs (4.1 GB at
# n = 1000, R = 90), so the test batch shrinks as the stack grows.
EVAL_BUDGET_BYTES = 256 * 2**20


def stacked_test_batch(batch_size: int, n_runs: int, widest_output: int) -> int:
    """Test examples per forward pass of a stack of n_runs runs: train.test_batch_size, or
    fewer where the widest layer output (widest_output float32 values per example and run)
    would exceed EVAL_BUDGET_BYTES; at least one."""
    fits = EVAL_BUDGET_BYTES // (n_runs * widest_output * 4)
    return max(1, min(batch_size, fits))


class StackTrainer(Trainer):
    """Runs of element-wise optimizers trained as one batched model: where a GPU trains the
    runs (stack_runs=auto on CUDA, or stack_runs=always).

    Every parameter is one tensor with a leading run dimension, [R, ...], stacked from the
    runs' own initial models, and torch.func.vmap computes all R runs' losses and gradients
    at once (models.VmappedModel: batched matmuls, grouped convolutions). Each run gets its
    own gradient, up to float rounding: a batched kernel sums in another order than a lone
    run's kernel, so a stacked run agrees with the same run trained alone to a stated
    tolerance, not bit for bit (tests/test_engine.py).

    Each optimizer setting updates its runs' rows: its parameters are views of each run's
    row of every stacked tensor, so torch.optim updates the stacked tensors in place. That
    is exact only for optimizers whose update is element-wise (optimizer config
    `elementwise: true`); the others train in RunTrainers.
    """

    def __init__(self, runs: list[RunSpec], model: dict, dataset: dict, device: torch.device):
        super().__init__(runs, device)
        self.model = models.stacked(
            [
                models.build_model(model, dataset, stream_seed(run.seed, "init")).to(device)
                for run in runs
            ]
        )
        self.widest_output = self.model.widest_output(tuple(dataset["input_shape"]))
        params = list(self.model.params.values())  # each [R, ...]
        # per optimizer setting: (its optimizer, its views, each view's (parameter, row))
        self.optimizers, self.specs = [], list(rows_by_optimizer(runs))
        for spec, rows in rows_by_optimizer(runs).items():
            slots = [(i, r) for r in rows for i in range(len(params))]
            views = [params[i].detach()[r] for i, r in slots]
            kernel = build.implementation(spec.config, device.type)
            optimizer = build.build_optimizer(spec.config, views, kernel)
            self.optimizers.append((optimizer, views, slots))

    def step(self, tensors: DatasetTensors, batches: Batches) -> None:
        """One step of every run of the stack, in this order: each run's batch; forward,
        loss and backward of all runs at once (vmap); each optimizer setting's update of
        its runs' rows; the counting of the batch losses and the step's time."""
        start = self.clock.start()
        seeds = [run.seed for run in self.runs]
        if batches[seeds[0]] is None:  # full batch: one group of inputs for all runs
            x, y = tensors.train_x.unsqueeze(0), tensors.train_y.unsqueeze(0)
        else:  # a group per run: its own mini-batch
            index = torch.stack([batches[seed] for seed in seeds])  # [R, B]
            images = tensors.train_x.flatten(1)  # every run's batch gathered as rows
            x = images.index_select(0, index.flatten())
            x = x.view(*index.shape, *tensors.train_x.shape[1:])
            y = tensors.train_y.index_select(0, index.flatten()).view(index.shape)
        losses, grads = self.model.losses_and_grads(x, y)  # each run's rows: its own gradient
        # torch 2.15's fused kernels read a gradient as if laid out like its parameter (a
        # transposed one gives a wrong update), and vmap's can come out transposed
        grads = [grad.contiguous() for grad in grads]
        for optimizer, views, slots in self.optimizers:
            for view, (i, row) in zip(views, slots, strict=True):
                view.grad = grads[i][row]
            optimizer.step()
        self.grad_evals += 1  # a diverged run keeps computing in the stack, unreported
        self.train_s += self.clock.stop(start)
        self.loss_sum += losses  # stays on the device: no host sync per step
        self.loss_count += 1
        self.last_loss = losses

    @torch.no_grad()
    def test(self, tensors: DatasetTensors, batch_size: int) -> list[tuple[float, float]]:
        x, y, n_runs = tensors.test_x, tensors.test_y, len(self.runs)
        batch_size = stacked_test_batch(batch_size, n_runs, self.widest_output)
        loss_sum = torch.zeros(n_runs, device=x.device, dtype=torch.float64)
        correct = torch.zeros(n_runs, device=x.device, dtype=torch.int64)
        for start in range(0, len(x), batch_size):
            logits = self.model.logits(x[start : start + batch_size].unsqueeze(0))  # [R, n, C]
            target = y[start : start + batch_size].expand(n_runs, -1)
            losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            loss_sum += losses.sum(dim=1).double()
            correct += (logits.argmax(dim=2) == target).sum(dim=1)
        losses, accuracies = (loss_sum / len(x)).tolist(), (correct.double() / len(x)).tolist()
        return list(zip(losses, accuracies, strict=True))

    def optimizers_and_specs(self) -> list[tuple[torch.optim.Optimizer, OptimizerSpec]]:
        """Each optimizer setting's optimizer, with the setting."""
        return [(o, spec) for (o, _, _), spec in zip(self.optimizers, self.specs, strict=True)]

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
