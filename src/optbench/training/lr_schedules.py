"""Learning-rate schedules: the factor that multiplies every optimizer's configured lr at
each step, the same for lone and stacked runs.

    constant       1 at every step (the default; the tutorials' protocols have no schedule)
    warmup_cosine  linear warmup from lr / warmup_steps to lr over warmup_steps steps, then
                   a half cosine down towards final_lr_fraction x lr, reached as training
                   ends (transformers' get_cosine_schedule_with_warmup, with a floor)
    warmup_linear  the same warmup, then a straight line down towards final_lr_fraction x lr
    step           lr x gamma ** (steps taken // step_size)

Steps count from 0: the factor of step t is the one the optimizer's t-th update uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from optbench.config.schema import is_number

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "step")


def is_constant(schedule: Mapping) -> bool:
    return schedule["name"] == "constant"


def factor(schedule: Mapping, step: int, total_steps: int) -> float:
    """The multiple of the configured lr in force at the step-th update (0-based) of a
    training of total_steps updates."""
    name = schedule["name"]
    if name == "constant":
        return 1.0
    if name == "step":
        return schedule["gamma"] ** (step // schedule["step_size"])
    warmup = schedule["warmup_steps"]
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total_steps - warmup)  # 0 after warmup, 1 as training ends
    final = schedule["final_lr_fraction"]
    if name == "warmup_cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - final) * progress  # warmup_linear


def check(schedule: Mapping, total_steps: int) -> str | None:
    """What is wrong with a schedule's keys for a training of total_steps updates, as one
    sentence; None when nothing is."""
    name = schedule["name"]
    if name not in SCHEDULES:
        return f"Unknown schedule.name={name!r}; valid choices: {', '.join(SCHEDULES)}."
    if name == "step":
        step_size, gamma = schedule["step_size"], schedule["gamma"]
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            return f"Invalid schedule.step_size={step_size!r}: a positive number of steps."
        if not is_number(gamma) or not 0 < gamma <= 1:
            return f"Invalid schedule.gamma={gamma!r}: a factor in (0, 1]."
    if name.startswith("warmup_"):
        warmup, final = schedule["warmup_steps"], schedule["final_lr_fraction"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            return f"Invalid schedule.warmup_steps={warmup!r}: a number of steps, 0 or more."
        if warmup >= total_steps:
            return (
                f"Invalid schedule.warmup_steps={warmup}: the training has {total_steps} "
                "steps; warm up for fewer (or train longer with train.steps / train.epochs)."
            )
        if not is_number(final) or not 0 <= final <= 1:
            return f"Invalid schedule.final_lr_fraction={final!r}: a fraction in [0, 1]."
    return None


def notes(schedule: Mapping, specs: list) -> list[str]:
    """A note for each schedule-free optimizer that trains under a schedule (of_setting: a
    tuning trial of one trains under a constant schedule, with a warmup of its own)."""
    from optbench.optimizers.traits import is_schedule_free

    return [
        f"Optimizer {spec.name} is schedule-free: it needs no learning-rate schedule, and "
        f"schedule={schedule['name']} multiplies its lr at every step all the same."
        for spec in specs
        if is_schedule_free(spec.config) and not is_constant(of_setting(schedule, spec))
    ]


def of_setting(schedule: Mapping, spec) -> dict:
    """The schedule an optimizer setting trains with: the protocol's, with the values the
    setting itself holds under `schedule` (a tuning trial's drawn warmup_steps)."""
    return {**schedule, **spec.config.get("schedule", {})}


def set_lr(optimizers: list[tuple]) -> None:
    """For every (optimizer, multiple): set each parameter group's lr to its
    lr as built x multiple (kept in the group as `initial_lr`, as torch's schedulers do:
    Muon's AdamW group has an lr of its own, SaRA works its own out). A group without an lr
    (A2Grad's) has nothing to scale."""
    for optimizer, multiple in optimizers:
        for group in optimizer.param_groups:
            if group.get("lr") is not None:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * multiple
