"""The models: the two built-in families (ffnn, lenet), and a user's own, named by
`model._target_` (docs/custom_workloads.md). Every model returns logits; the loss is
cross-entropy on them, which is exactly log_softmax followed by NLL (what the 2019 PyTorch
example computes)."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from optbench.config.schema import import_target
from optbench.errors import ConfigError


class FFNN(nn.Module):
    """flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    @property
    def output_layer(self) -> nn.Module:
        """The classifier's output layer (the logits): Muon updates it as AdamW does."""
        return self.fc2


@torch.no_grad()
def ffnn_loss_and_grads(model: FFNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ffnn's mean cross-entropy on (x, y), its gradients left in each parameter's .grad
    as autograd would leave them (to float rounding: tests/test_models.py).

    Written out, forward and backward are six matrix products and a few element-wise ops,
    each result in the layout the next one wants: the ffnn's step takes about two thirds
    of autograd's time."""
    w1, b1, w2, b2 = (
        p.detach() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias)
    )
    x = x.flatten(1)
    a = torch.addmm(b1, x, w1.t()).relu_()  # the hidden layer after the ReLU [n, H]
    log_p = torch.addmm(b2, a, w2.t()).log_softmax(dim=1)  # [n, C]
    target = y.unsqueeze(1)
    loss = -log_p.gather(1, target).mean()
    dz = log_p.exp_()  # d(mean loss)/d(logits) = (softmax - one-hot) / n
    dz.scatter_add_(1, target, torch.full_like(dz[:, :1], -1.0)).div_(len(x))
    # ReLU's backward as autograd's: the gradient where the output is > 0, else 0
    dh = torch.ops.aten.threshold_backward(dz.mm(w2), a, 0.0)
    grads = (dh.t().mm(x), dh.sum(dim=0), dz.t().mm(a), dz.sum(dim=0))
    for p, grad in zip(
        (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias), grads, strict=True
    ):
        p.grad = grad
    return loss


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

    @property
    def output_layer(self) -> nn.Module:
        """The classifier's output layer (the logits): Muon updates it as AdamW does."""
        return self.fc2


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
        # The example's relu-then-pool, computed as pool-then-relu: ReLU is monotone, so
        # max(relu(window)) = relu(max(window)), the same value (only a window whose maximum
        # is -0.0 gives -0.0 instead of 0.0), and the gradients agree too (where a window's
        # maximum is <= 0 both orders pass none back). The ReLU then touches a quarter of
        # the values (docs/speed.md: what that saves).
        x = F.relu(F.max_pool2d(self.conv1(x), 2, 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2, 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)

    @property
    def output_layer(self) -> nn.Module:
        """The classifier's output layer (the logits): Muon updates it as AdamW does."""
        return self.fc2


class VmappedModel:
    """R runs of a model computed as one by torch.func.vmap, gradients by autograd: batched
    matmuls for the ffnn, grouped convolutions for the LeNet.

    Inputs come in G groups of n examples, x [G, n, ...] and y [G, n]: G = R gives every
    run its own mini-batch, G = 1 gives all runs the same examples (the test set, a full
    batch)."""

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

    def widest_output(self, input_shape: tuple[int, ...]) -> int:
        """The most values a layer outputs for one example of one run (the LeNet's first
        convolution on MNIST: 20 x 24 x 24), found by a forward pass on the meta device."""
        sizes = []
        hooks = [
            module.register_forward_hook(lambda _, __, output: sizes.append(output.numel()))
            for module in self.template.modules()
        ]
        try:
            self.template(torch.zeros(1, *input_shape, device="meta"))
        finally:
            for hook in hooks:
                hook.remove()
        return max(sizes)

    def losses_and_grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if len(x) == 1:
            losses = torch.func.vmap(self._loss, in_dims=(0, None, None))(self.params, x[0], y[0])
        else:
            losses = torch.func.vmap(self._loss)(self.params, x, y)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        return losses.detach(), list(grads)


def stacked(modules: list[nn.Module]) -> VmappedModel:
    """The runs' models as one: their parameters stacked along a new first dimension."""
    params, _ = torch.func.stack_module_state(modules)
    return VmappedModel(modules[0], params)


MODELS = {"ffnn": FFNN, "lenet": LeNet}

# The keys of a user's model config that are optbench's, not the class's: every other key
# is passed to the class (or builder function) as a keyword argument.
CUSTOM_KEYS = ("name", "_target_", "source_sha256")
# What a user's model is given from the dataset, where its signature names the argument
# and the config does not set it.
FROM_DATASET = ("input_shape", "num_classes")


def is_custom(model: Mapping) -> bool:
    """Whether the model is a user's own (`model._target_`), not a built-in family."""
    return "_target_" in model


def model_kwargs(model: Mapping) -> dict:
    """The arguments the model's class is given from its config (for a user's model, every
    key but CUSTOM_KEYS)."""
    dropped = CUSTOM_KEYS if is_custom(model) else ("name", "sparse_input")
    return {key: value for key, value in model.items() if key not in dropped}


def custom_builder(model: Mapping):
    """The class or function that model._target_ names, imported."""
    target = str(model["_target_"])
    builder = import_target(
        target,
        f"Model {model.get('name')!r}",
        "model._target_",
        "a torch.nn.Module class or a function returning one, e.g. "
        "torchvision.models.resnet18 or my_package.MyNet, importable from PYTHONPATH.",
    )
    if not callable(builder):
        raise ConfigError(
            f"Model {model.get('name')!r}: model._target_={target!r} is not a class or a "
            "function; give a torch.nn.Module class or a function returning one."
        )
    return builder


def _parameters(builder) -> dict:
    try:
        return dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: takes what it is given
        return {}


def custom_kwargs(model: Mapping, dataset: Mapping) -> dict:
    """The keyword arguments a user's model is built with: its config's, then the dataset's
    input_shape and num_classes where its signature names them and the config does not,
    and weights=None where its signature has `weights` (nothing is downloaded)."""
    parameters = _parameters(custom_builder(model))
    if isinstance(model, DictConfig):  # lists and mappings as Python's own
        model = OmegaConf.to_container(model, resolve=True)
    kwargs = model_kwargs(model)
    values = {"input_shape": tuple(dataset["input_shape"]), "num_classes": dataset["num_classes"]}
    for key in FROM_DATASET:
        if key in parameters and key not in kwargs:
            kwargs[key] = values[key]
    if "weights" in parameters:
        if kwargs.get("weights") is not None:
            raise ConfigError(
                f"Invalid model.weights={kwargs['weights']!r}: optbench trains every model "
                "from its seeded initial weights and downloads none; drop model.weights."
            )
        kwargs["weights"] = None
    return kwargs


def check_model_config(model: Mapping) -> None:
    if is_custom(model):
        _check_custom_config(model)
        return
    if model["name"] not in MODELS:
        raise ConfigError(
            f"Unknown model name {model['name']!r}; valid choices: {', '.join(MODELS)}, or "
            "model=custom model._target_=my_package.MyNet (docs/custom_workloads.md)."
        )
    takes = [key for key in _parameters(MODELS[model["name"]]) if key not in FROM_DATASET]
    for key, value in model_kwargs(model).items():
        if key not in takes:
            raise ConfigError(
                f"model.{key}={value!r}: the {model['name']} takes no argument {key!r}; it "
                f"takes {', '.join(takes)}. A model of your own takes any: model=custom "
                "model._target_=my_package.MyNet (docs/custom_workloads.md)."
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Invalid model.{key}={value!r}: it must be a positive integer.")
    if model.get("sparse_input", False) and model["name"] != "ffnn":
        raise ConfigError(
            f"model.sparse_input=true is an option of the ffnn only, not of {model['name']!r}."
        )


def _check_custom_config(model: Mapping) -> None:
    """A user's model: a `_target_` given and importable, a name of its own."""
    target = model["_target_"]
    if target is None or target == "???" or not str(target).strip():
        raise ConfigError(
            f"Model {model.get('name')!r} needs model._target_=... naming a torch.nn.Module "
            "class or a function returning one, e.g. model._target_=my_package.MyNet or "
            "model._target_=torchvision.models.resnet18 (docs/custom_workloads.md)."
        )
    if model.get("name") in MODELS:
        raise ConfigError(
            f"model.name={model['name']!r} with model._target_={target!r}: {model['name']!r} "
            "is a built-in model's name; give your model a name of its own, e.g. "
            "model.name=my_net."
        )
    custom_builder(model)


def build_model(model: Mapping, dataset: Mapping, seed: int) -> nn.Module:
    """The model's initial weights depend on `seed` alone, never on the global RNG state.

    Weights are drawn on the CPU, so a seed gives the same initial model on every device.
    A user's model is built from its `_target_` with custom_kwargs (compose/checks.py has
    checked it on a throwaway batch).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_custom(model):
            return custom_builder(model)(**custom_kwargs(model, dataset))
        cls = SparseInputFFNN if model.get("sparse_input", False) else MODELS[model["name"]]
        return cls(tuple(dataset["input_shape"]), dataset["num_classes"], **model_kwargs(model))
