"""Optimizers come from config files: `_target_` names a torch.optim.Optimizer subclass and
every other key but `name` is passed to it. The registry is the `optimizer/` config group."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from optbench.config import ConfigError


def optimizer_kwargs(optimizer: DictConfig) -> dict:
    """The hyperparameters to pass to the optimizer class (lists become tuples, e.g. betas)."""
    kwargs = OmegaConf.to_container(optimizer, resolve=True)
    kwargs.pop("name", None)
    kwargs.pop("_target_", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def optimizer_class(optimizer: DictConfig) -> type[torch.optim.Optimizer]:
    try:
        cls = get_class(optimizer._target_)
    except Exception as error:
        raise ConfigError(
            f"Optimizer {optimizer.name!r}: cannot import optimizer._target_="
            f"{optimizer._target_!r} ({' '.join(str(error).split())})."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"Optimizer {optimizer.name!r}: optimizer._target_={optimizer._target_!r} is not a "
            "torch.optim.Optimizer subclass."
        )
    return cls


def build_optimizer(optimizer: DictConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    return optimizer_class(optimizer)(params, **optimizer_kwargs(optimizer))


def check_optimizer_config(optimizer: DictConfig) -> None:
    """Build the optimizer on a throwaway parameter, so torch's own checks (lr >= 0,
    0 <= momentum, betas in [0, 1), ...) reject bad hyperparameters before training."""
    if "_target_" not in optimizer or "name" not in optimizer:
        raise ConfigError(
            f"Optimizer config {OmegaConf.to_container(optimizer)} needs a `name` and a "
            "`_target_` naming a torch.optim.Optimizer subclass."
        )
    try:
        build_optimizer(optimizer, [torch.zeros(1, requires_grad=True)])
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        given = ", ".join(f"{k}={v}" for k, v in optimizer_kwargs(optimizer).items())
        raise ConfigError(
            f"Optimizer {optimizer.name!r} rejects its hyperparameters ({given}): "
            f"{' '.join(str(error).split())}."
        ) from None
