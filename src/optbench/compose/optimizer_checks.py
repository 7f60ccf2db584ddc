"""An optimizer's config checked before training: its `name` and `_target_`, whether the
registry can train it here, its hyperparameters' names (against the class's signature) and
values (numbers where the class takes numbers), and a build on a throwaway model, so that
torch's own checks refuse bad values at once."""

from __future__ import annotations

import inspect
import math

import torch
from omegaconf import DictConfig, OmegaConf

from optbench.config.schema import is_number
from optbench.errors import ConfigError
from optbench.optimizers import build, registry


def check_optimizer_config(optimizer: DictConfig, model: torch.nn.Module) -> None:
    """Build the optimizer on a throwaway copy of the model, so torch's own checks (lr >= 0,
    betas in [0, 1), sparse gradients for SparseAdam, ...) reject bad hyperparameters
    before any training."""
    if "_target_" in optimizer.keys() and OmegaConf.is_missing(optimizer, "_target_"):
        raise ConfigError(
            f"Optimizer {optimizer.get('name')!r} needs optimizer._target_=... naming a "
            "torch.optim.Optimizer subclass, e.g. optimizer._target_=my_package.MyOptimizer."
        )
    if "_target_" not in optimizer or "name" not in optimizer:
        raise ConfigError(
            f"Optimizer config {OmegaConf.to_container(optimizer)} needs a `name` and a "
            "`_target_` naming a torch.optim.Optimizer subclass."
        )
    if not isinstance(optimizer.get("elementwise", False), bool):
        raise ConfigError(
            f"Optimizer {optimizer.name!r}: elementwise={optimizer.elementwise!r} must be true "
            "(every element's update depends on its own gradient and state only) or false."
        )
    why = registry.refusal(optimizer)
    if why:
        raise ConfigError(
            f"Optimizer {optimizer.name!r} cannot train on optbench's models: {why}. "
            "`optbench optimizers` lists the ones that can."
        )
    why = registry.not_elementwise_because(optimizer)
    if why:
        raise ConfigError(f"Optimizer {optimizer.name!r}: {why}.")
    _check_names(optimizer)
    _check_numbers(optimizer)
    try:
        build.build_optimizer(optimizer, model)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        given = ", ".join(f"{k}={v}" for k, v in build.optimizer_kwargs(optimizer).items())
        raise ConfigError(
            f"Optimizer {optimizer.name!r} refuses this configuration ({given}): "
            f"{' '.join(str(error).split())}."
        ) from None


def _check_names(optimizer: DictConfig) -> None:
    """Refuse a hyperparameter the class does not name, naming the ones it takes: for a
    class without **kwargs, and for every registry optimizer (which would keep it in
    **kwargs and never use it); a user's class that takes **kwargs decides itself."""
    parameters = inspect.signature(build.optimizer_class(optimizer)).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    if takes_any and registry.registry_name(optimizer) is None:
        return
    named = [
        name
        for name, p in list(parameters.items())[1:]  # less params (or model)
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    named += list(registry.group_keys(optimizer))  # its matrices' parameter group's
    unknown = [key for key in build.optimizer_kwargs(optimizer) if key not in named]
    if unknown:
        raise ConfigError(
            f"Optimizer {optimizer.name!r} ({optimizer._target_}) takes no hyperparameter "
            f"{unknown[0]!r}; it takes: {', '.join(named)}."
        )


def _check_numbers(optimizer: DictConfig) -> None:
    """Refuse a hyperparameter that is NaN or infinite (unless that is the class's default,
    as D-Adaptation's growth_rate=inf is), or, where the class's default is a number (the
    lr always), anything but a number: text, or a boolean, which Python would take as 1 or
    0 (lr=true would train at lr 1.0); where it is a tuple of numbers (betas), anything but
    a list of numbers. Names the key (torch.optim's own checks would let NaN through)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(
            build.optimizer_class(optimizer)
        ).parameters.items()
    }
    for key, value in build.optimizer_kwargs(optimizer).items():
        default = defaults.get(key)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item) and value != default:
                raise ConfigError(
                    f"Invalid optimizer.{key}={value!r} for {optimizer.name!r}: it must be a "
                    "finite number."
                )
        if value is None:
            continue  # the class's own choice (A2Grad's lr)
        if isinstance(default, tuple) and all(is_number(d) for d in default):
            if not isinstance(value, tuple) or not all(is_number(v) for v in value):
                example = ",".join(str(d) for d in default)
                raise ConfigError(
                    f"Invalid optimizer.{key}={_as_given(value)} for {optimizer.name!r}: it "
                    f"must be a list of numbers, e.g. optimizer.{key}=[{example}] (the "
                    "class's default)."
                )
        elif (is_number(default) or key == "lr") and not is_number(value):
            raise ConfigError(
                f"Invalid optimizer.{key}={_as_given(value)} for {optimizer.name!r}: it must "
                f"be a number (the class's default is {default!r}"
                + ("; true and false are not numbers)." if isinstance(value, bool) else ").")
            )


def _as_given(value) -> str:
    """A value as the command line writes it: true, not Python's True; text quoted."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(_as_given(v) for v in value) + "]"
    return repr(value)
