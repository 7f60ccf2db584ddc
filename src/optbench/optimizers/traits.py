"""What the engine must know of an optimizer besides its hyperparameters, as one record.

An optimizer setting's `Traits` are made once, when the plan is made (plan.OptimizerSpec),
from the config's `elementwise`, registry.py's tables and the class itself; the trainers,
the stack and the step loop read them and derive nothing again.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from optbench.optimizers import registry


@dataclass(frozen=True)
class Traits:
    """An optimizer setting's traits."""

    # every element's update uses its own gradient and state only: its runs share one
    # optimizer call (trainers.OptimizerGroup) and may train stacked (stack.StackTrainer)
    elementwise: bool
    # its update reads each gradient element by element, whatever the tensor's memory
    # layout, so a model's convolution weights may be laid out channels-last (oneDNN's
    # fast path on the CPU). Known of the element-wise updates; any other may flatten a
    # gradient with view(-1) (L-BFGS does), which needs the default layout.
    channels_last: bool
    step_takes_closure: bool  # step(closure): it evaluates the loss itself (L-BFGS)
    create_graph: bool  # Hessian-vector products: the gradient keeps its graph
    differentiable: bool  # the config asks for a differentiable update (autograd's graph)
    draws_random: bool  # from a global generator: the engine seeds it (RunTrainer.seeded)
    has_modes: bool  # train()/eval(): evaluated at its averaged weights (schedule-free)
    parameter_groups: str | None  # registry.parameter_groups: "model", "muon", "low_rank"
    refused: str | None  # why it cannot train on optbench's models; None when it can

    @property
    def needs_graph(self) -> bool:
        """Whether a step needs autograd's graph (no written-out forward and backward)."""
        return self.create_graph or self.differentiable


def is_schedule_free(config: Mapping) -> bool:
    """Whether an optimizer config is schedule-free (its `_target_` says so): it averages its
    iterates in place of a learning-rate schedule, and warms up with its own warmup_steps."""
    return "schedulefree" in str(config.get("_target_", "")).lower()


def traits_of(config: Mapping) -> Traits:
    """The traits of a resolved optimizer config (a plain dict with `_target_`)."""
    from optbench.optimizers.build import optimizer_class  # torch: not for --help

    cls = optimizer_class(config)
    needs = registry.needs(config)
    elementwise = bool(config.get("elementwise", False))
    return Traits(
        elementwise=elementwise,
        channels_last=elementwise,
        step_takes_closure="closure" in inspect.signature(cls.step).parameters,
        create_graph="hessian" in needs,
        differentiable=bool(config.get("differentiable", False)),
        draws_random="random" in needs,
        has_modes=callable(getattr(cls, "eval", None)) and callable(getattr(cls, "train", None)),
        parameter_groups=registry.parameter_groups(config),
        refused=registry.refusal(config),
    )
