"""Optimizers come from configs: `_target_` names a torch.optim.Optimizer subclass and
every other key but `name` and `elementwise` is passed to it. The registry is the
`optimizer/` config group: optbench's files in configs/optimizer/, and every optimizer of
pytorch_optimizer's registry (registry.py), which this module also gives what it needs
besides the parameters (a model, Muon's parameter groups, values of the protocol).

`elementwise: true` declares that the update of every parameter element depends on that
element's own gradient and state alone (no norms or dot products over a whole tensor):
then one optimizer may update several runs' tensors (trainers.OptimizerGroup), and a GPU
may train the runs as one stacked model (stack.StackTrainer). L-BFGS and
any optimizer that does not declare it train run by run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from optbench.config.schema import import_target
from optbench.errors import ConfigError
from optbench.optimizers import registry


def optimizer_kwargs(optimizer: Mapping) -> dict:
    """The hyperparameters to pass to the optimizer class (lists become tuples, e.g. betas)."""
    kwargs = dict(plain(optimizer))
    # optbench's, not the class's (source_sha256: the SHA-256 of a user's class's file)
    for key in ("name", "_target_", "elementwise", "schedule", "source_sha256"):
        kwargs.pop(key, None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def plain(optimizer: Mapping) -> dict:
    """An optimizer config as a plain dict (a DictConfig resolved)."""
    if isinstance(optimizer, DictConfig):
        return OmegaConf.to_container(optimizer, resolve=True)
    return dict(optimizer)


def optimizer_class(optimizer: Mapping) -> type[torch.optim.Optimizer]:
    name, target = optimizer["name"], optimizer["_target_"]
    cls = import_target(
        target,
        f"Optimizer {name!r}",
        "optimizer._target_",
        "a torch.optim.Optimizer subclass, e.g. torch.optim.Adam or my_package.MyOptimizer.",
    )
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"Optimizer {name!r}: optimizer._target_={target!r} is not a "
            "torch.optim.Optimizer subclass."
        )
    return cls


KERNEL_OPTIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "foreach, capturable": {"foreach": True, "capturable": True},
}


def build_optimizer(
    optimizer: Mapping,
    model: torch.nn.Module | Iterable[torch.Tensor],
    implementation: str = "default",
) -> torch.optim.Optimizer:
    """The optimizer of a run's model, or of a list of tensors (an OptimizerGroup's or a
    stack's runs: element-wise optimizers only). implementation: "fused", "foreach" or
    "foreach, capturable" (as implementation(optimizer, device) chose), or "default":
    whatever the config and the class choose."""
    chosen = KERNEL_OPTIONS.get(implementation, {})
    cls, kwargs = optimizer_class(optimizer), optimizer_kwargs(optimizer)
    if not isinstance(model, torch.nn.Module):  # a list of tensors
        return cls(model, **kwargs, **chosen)
    groups = registry.parameter_groups(optimizer)
    if groups == "model":
        first = model  # the class takes the model itself (AdamMini)
    elif groups == "muon":
        first = muon_parameter_groups(model)
    elif groups == "low_rank":  # the group's keys go to the matrices' group
        group = registry.group_keys(optimizer)
        kwargs = {k: v for k, v in kwargs.items() if k not in group}
        matrices = [p for p in model.parameters() if p.ndim == 2]
        others = [p for p in model.parameters() if p.ndim != 2]
        first = [{"params": matrices, **group}, {"params": others}]
    else:
        first = model.parameters()
    return cls(first, **kwargs, **chosen)


def muon_parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Muon's parameter groups, adapted from pytorch_optimizer's prepare_muon_parameters
    (which leaves out layers named `head`): the weight matrices of linear and convolution
    layers take the orthogonalised update (use_muon=True), but for the classifier's output
    layer (the one the model names: its `output_layer`); that layer and every other
    parameter (biases, an embedding) take the optimizer's AdamW update."""
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    output = model.output_layer
    muon, other = [], []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            matrix = isinstance(module, layers) and parameter.ndim >= 2 and module is not output
            (muon if matrix else other).append(parameter)
    return [{"params": muon, "use_muon": True}, {"params": other, "use_muon": False}]


def fill_from_protocol(optimizer: DictConfig, steps: int) -> None:
    """Set the arguments an optimizer needs from the protocol where the config leaves them
    null (registry.Known.from_protocol: Ranger21's num_iterations)."""
    values = {"steps": steps}
    known = registry.known(optimizer)
    for key, source in (known.from_protocol if known is not None else {}).items():
        if optimizer.get(key) is None:
            optimizer[key] = values[source]


# torch.optim's fused kernels: the operator each class's fused step calls. Whether the
# installed torch has that operator for a device is in its dispatcher; whether the class's
# step takes it there is the class's own check (torch 2.11's dispatcher has a CUDA kernel of
# _fused_adagrad_, and Adagrad(fused=True) refuses CUDA parameters all the same).
FUSED_OPERATORS = {
    torch.optim.SGD: "_fused_sgd_",
    torch.optim.Adam: "_fused_adam_",
    torch.optim.AdamW: "_fused_adamw_",
    torch.optim.Adagrad: "_fused_adagrad_",
}
# Classes whose step reads a state tensor on the host unless capturable (ASGD's foreach
# path: `.item()` of its mu and eta): on a GPU, a synchronisation every step.
READS_ON_HOST = (torch.optim.ASGD,)


def implementation(optimizer: Mapping, device_type: str) -> str:
    """The kernel that updates a run's tensors on a device when the engine chooses: "fused"
    where the installed torch has the class's fused kernel for that device (SGD, Adam,
    AdamW, Adagrad: one pass over a tensor instead of up to ten), else "foreach" where the
    class has that option ("foreach, capturable" for a class that would otherwise read its
    state on the host each step, on a device where torch allows it), else "default". Where
    the config itself sets `fused`, `foreach` or `differentiable`, "default": the config
    decides."""
    cls = optimizer_class(optimizer)
    options = inspect.signature(cls.__init__).parameters
    if {"fused", "foreach", "differentiable"} & set(optimizer.keys()):
        return "default"
    if "fused" in options and has_fused_kernel(cls, device_type):
        return "fused"
    if "foreach" not in options:
        return "default"
    if issubclass(cls, READS_ON_HOST) and device_type in capturable_devices():
        return "foreach, capturable"
    return "foreach"


def has_fused_kernel(cls: type, device_type: str) -> bool:
    """Whether this torch has a fused kernel of torch.optim class cls (or the torch.optim
    class it derives from) for a device type: the device is among those torch.optim runs
    fused kernels on, the dispatcher has the operator's kernel for it, and, where this
    machine has such a device, the torch.optim class steps a parameter there with
    fused=True."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    base = next((c for c in cls.__mro__ if c in FUSED_OPERATORS), None)
    if base is None or device_type not in _get_fused_kernels_supported_devices():
        return False
    operator = FUSED_OPERATORS[base]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{operator}", device_type.upper()):
        return False
    return not device_present(device_type) or fused_step_runs(base, device_type)


def device_present(device_type: str) -> bool:
    """Whether this machine has a device of the type that torch can use."""
    module = getattr(torch, device_type, None)
    return device_type == "cpu" or bool(module and module.is_available())


@functools.cache
def fused_step_runs(cls: type, device_type: str) -> bool:
    """Whether torch.optim class cls steps a one-element parameter on the device with
    fused=True (once per class and device type in a process)."""
    parameter = torch.zeros(1, device=device_type, requires_grad=True)
    parameter.grad = torch.zeros_like(parameter)
    try:
        cls([parameter], lr=0.1, fused=True).step()
    except RuntimeError:
        return False
    return True


def capturable_devices() -> list[str]:
    """The device types on which torch.optim accepts capturable=True (state on the device)."""
    from torch.optim.optimizer import _get_capturable_supported_devices

    return _get_capturable_supported_devices()


def expand_lr_grid(optimizer_cfgs: list[DictConfig], lr_grid) -> list[DictConfig]:
    """One config per optimizer and multiple m of lr_grid, with lr = m x its configured lr."""
    if lr_grid is None:
        return list(optimizer_cfgs)
    expanded = []
    for optimizer in optimizer_cfgs:
        if optimizer.get("lr") is None:
            raise ConfigError(
                f"lr_grid needs an lr to multiply, and optimizer {optimizer.name!r} has none."
            )
        for multiple in lr_grid:
            copy = OmegaConf.create(OmegaConf.to_container(optimizer, resolve=True))
            copy.lr = float(optimizer.lr) * float(multiple)
            expanded.append(copy)
    return expanded


class SparseAdamWithAdam(torch.optim.Optimizer):
    """SparseAdam for the parameters marked `sparse_grad` (their gradients are sparse) and
    dense Adam for the rest, with the same hyperparameters: torch's SparseAdam refuses
    dense gradients, so a model with a sparse first layer needs both."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        params = list(params)
        sparse = [p for p in params if getattr(p, "sparse_grad", False)]
        dense = [p for p in params if not getattr(p, "sparse_grad", False)]
        if not sparse:
            raise ValueError(
                "SparseAdam needs a parameter with sparse gradients, and this model has none: "
                "use the ffnn with model.sparse_input=true"
            )
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in (self.sparse, self.dense):  # a schedule sets this optimizer's lr
            for group in inner.param_groups:
                group["lr"] = self.param_groups[0]["lr"]
        self.sparse.step()
        self.dense.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none)
        self.dense.zero_grad(set_to_none)
