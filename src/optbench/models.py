"""The two model families. Both return logits; the loss is cross-entropy on them, which is
exactly log_softmax followed by NLL (what the 2019 PyTorch example computes)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from optbench.config import ConfigError


class FFNN(nn.Module):
    """flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SparseInputFFNN(nn.Module):
    """The ffnn with a first layer that yields sparse gradients, for SparseAdam.

    fc1 is an EmbeddingBag over each image's non-zero pixels, with the pixel intensities
    as per-sample weights: sum_j W[j] * x_j over the non-zero x_j, the same linear map as
    Linear(in, hidden) (MNIST's images are about 19% non-zero). Its weight is the
    transpose of that Linear's, drawn from the same initialisation, so for a seed this
    model computes what FFNN computes. Only the rows of the pixels present in a batch get
    a gradient: a sparse one.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        super().__init__()
        dense = FFNN(input_shape, num_classes, hidden)  # the same draws as the dense model
        self.fc1 = nn.EmbeddingBag(math.prod(input_shape), hidden, mode="sum", sparse=True)
        with torch.no_grad():
            self.fc1.weight.copy_(dense.fc1.weight.t())
        self.fc1.weight.sparse_grad = True  # tells SparseAdamWithAdam which is which
        self.fc1_bias = nn.Parameter(dense.fc1.bias.detach().clone())
        self.fc2 = dense.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        rows, pixels = x.nonzero(as_tuple=True)  # row-major: grouped by image
        offsets = torch.zeros(len(x), dtype=torch.long, device=x.device)
        offsets[1:] = torch.bincount(rows, minlength=len(x)).cumsum(0)[:-1]
        hidden = self.fc1(pixels, offsets, per_sample_weights=x[rows, pixels]) + self.fc1_bias
        return self.fc2(F.relu(hidden))


class LeNet(nn.Module):
    """The 2019 PyTorch MNIST example's CNN, sized for any C x H x W input.

    Each 5x5 convolution (no padding) takes 4 pixels off a side and each pooling halves it:
    28 -> 24 -> 12 -> 8 -> 4 for MNIST (flat 800), 32 -> 28 -> 14 -> 10 -> 5 for CIFAR-10
    (flat 1250).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        conv1_channels: int = 20,
        conv2_channels: int = 50,
        hidden: int = 500,
    ):
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, conv1_channels, 5, 1)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, 5, 1)
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        flat = conv2_channels * side_h * side_w
        self.fc1 = nn.Linear(flat, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class StackedFFNN:
    """R runs of the ffnn computed as one, forward and backward written out.

    Its weights are the stacked tensors of R FFNNs (torch.func.stack_module_state):
    fc1.weight [R, H, I], fc1.bias [R, H], fc2.weight [R, C, H], fc2.bias [R, C]. Inputs
    come in G groups of n examples, x [G, n, ...] and y [G, n]; group g feeds the R/G
    consecutive runs from g*R/G. So G = R gives every run its own mini-batch, and G = 1
    gives all runs the same examples (the test set, a full batch) in one matrix product.

    Written out, the backward pass is a handful of batched matmuls and element-wise ops,
    each producing its result in the layout the next one wants: forward and backward take
    two thirds of the time of vmap with autograd, whose weight gradients come out
    transposed and are copied back. A run's numbers depend on its own weights and inputs
    alone, whatever R is (tests/test_models.py and tests/test_engine.py check that bit for
    bit); against autograd on one FFNN they agree to float rounding (tests/test_models.py).
    """

    def __init__(self, params: dict[str, torch.Tensor]):
        self.params = params
        self.w1, self.b1, self.w2, self.b2 = (p.detach() for p in params.values())

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x as [G, n, I]; the hidden layer [R, n, H] after the ReLU; the logits [R, n, C]."""
        runs, hidden, inputs = self.w1.shape
        groups, n = x.shape[:2]
        x = x.reshape(groups, n, inputs)
        weights = self.w1.view(groups, -1, inputs)  # group g: its runs' [R/G*H, I] as one
        h = torch.baddbmm(self.b1.view(groups, 1, -1), x, weights.transpose(1, 2))
        # [G, n, R/G*H] -> [R, n, H], copied into the same layout whatever G: sums over it
        # then round the same for a run alone and in a stack
        h = h.view(groups, n, -1, hidden).transpose(1, 2).reshape(runs, n, hidden).contiguous()
        a = h.relu_()
        return x, a, torch.baddbmm(self.b2.unsqueeze(1), a, self.w2.transpose(1, 2))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [G, n, ...] -> every run's logits [R, n, C]."""
        return self._forward(x)[-1]

    def losses_and_grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each run's mean cross-entropy [R], and its gradients as autograd gives them for
        F.cross_entropy of that run alone: fc1.weight, fc1.bias, fc2.weight, fc2.bias."""
        runs, hidden, _ = self.w1.shape
        groups, n = y.shape
        x, a, logits = self._forward(x)
        target = y.view(groups, 1, n, 1).expand(groups, runs // groups, n, 1)
        target = target.reshape(runs, n, 1)
        log_p = logits.log_softmax(dim=2)
        losses = -log_p.gather(2, target).squeeze(2).mean(dim=1)
        dz = log_p.exp_()  # d(mean loss)/d(logits) = (softmax - one-hot) / n
        dz.scatter_add_(2, target, torch.full_like(dz[:, :, :1], -1.0)).div_(n)
        # ReLU's backward as autograd's: the gradient where the output is > 0, else 0
        dh = torch.ops.aten.threshold_backward(torch.bmm(dz, self.w2), a, 0.0)  # [R, n, H]
        dh_by_group = dh.view(groups, -1, n, hidden).transpose(2, 3).reshape(groups, -1, n)
        grad_w1 = torch.bmm(dh_by_group, x).view(self.w1.shape)
        # computed as its transpose [R, H, C]: MKL rounds a product with only C = 10 rows
        # differently in a batch than alone
        grad_w2 = torch.bmm(a.transpose(1, 2), dz).transpose(1, 2).contiguous()
        return losses, [grad_w1, dh.sum(dim=1), grad_w2, dz.sum(dim=1)]


class VmappedModel:
    """R runs of any model computed as one by torch.func.vmap, gradients by autograd (for
    the LeNet, a grouped convolution); the same interface as StackedFFNN."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor]):
        self.params = params
        self.template = copy.deepcopy(template).to("meta")  # the computation, without weights

    def _logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.template, params, (x,))

    def _loss(self, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(params, x), y)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 1:  # one group of inputs for all runs
            return torch.func.vmap(self._logits, in_dims=(0, None))(self.params, x[0])
        return torch.func.vmap(self._logits)(self.params, x)

    def losses_and_grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if len(x) == 1:
            losses = torch.func.vmap(self._loss, in_dims=(0, None, None))(self.params, x[0], y[0])
        else:
            losses = torch.func.vmap(self._loss)(self.params, x, y)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        return losses.detach(), list(grads)


def stacked(modules: list[nn.Module]) -> StackedFFNN | VmappedModel:
    """The runs' models as one: their parameters stacked along a new first dimension."""
    params, _ = torch.func.stack_module_state(modules)
    if type(modules[0]) is FFNN:
        return StackedFFNN(params)
    return VmappedModel(modules[0], params)


MODELS = {"ffnn": FFNN, "lenet": LeNet}


def model_kwargs(model: DictConfig) -> dict:
    return {key: value for key, value in model.items() if key not in ("name", "sparse_input")}


def check_model_config(model: DictConfig) -> None:
    if model.name not in MODELS:
        raise ConfigError(f"Unknown model name {model.name!r}; valid choices: {', '.join(MODELS)}.")
    for key, value in model_kwargs(model).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Invalid model.{key}={value!r}: it must be a positive integer.")
    if model.get("sparse_input", False) and model.name != "ffnn":
        raise ConfigError(
            f"model.sparse_input=true is an option of the ffnn only, not of {model.name!r}."
        )


def build_model(model: DictConfig, dataset: DictConfig, seed: int) -> nn.Module:
    """The model's initial weights depend on `seed` alone, never on the global RNG state.

    Weights are drawn on the CPU, so a seed gives the same initial model on every device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = SparseInputFFNN if model.get("sparse_input", False) else MODELS[model.name]
        return cls(tuple(dataset.input_shape), dataset.num_classes, **model_kwargs(model))
