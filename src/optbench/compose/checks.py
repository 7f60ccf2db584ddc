"""The checks every job passes before any training starts: every value that would fail
later is refused now, with one paragraph naming it and the valid choices."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from optbench.config.schema import (
    check_target,
    check_train,
    hyperparameters,
    positive_int,
    seed_list,
)
from optbench.data import prepare
from optbench.errors import ConfigError
from optbench.plan import Schedule, make_schedule
from optbench.training import lr_schedules


def check_config(cfg: DictConfig, optimizer_cfgs: list[DictConfig]) -> Schedule:
    """Raise ConfigError for any value that would fail later; no data, no training. An
    optimizer's values that the protocol supplies (Ranger21's num_iterations) are filled in
    here, once the training's length is known to be valid, before its throwaway build.
    Returns the training's steps (the plan keeps them)."""
    seed_list(cfg.seeds)
    check_train(cfg.train)
    from optbench import models
    from optbench.compose import optimizer_checks
    from optbench.data import in_memory
    from optbench.optimizers import build

    in_memory.check_dataset_config(cfg.dataset)
    n_train = prepare.train_size(cfg.dataset)
    if cfg.train.batch_size != "full" and cfg.train.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({n_train} examples); use at most that, or train.batch_size=full."
        )
    models.check_model_config(cfg.model)
    steps = make_schedule(cfg.train, n_train)
    total_steps = steps.total_steps
    problem = lr_schedules.check(cfg.schedule, total_steps)
    if problem:
        raise ConfigError(problem)
    if cfg.threads is not None:
        positive_int("threads", cfg.threads, " (or null for torch's default)")
    positive_int("tuning.trials", cfg.tuning.trials)
    check_target(cfg.target.test_accuracy, cfg.experiment_name)
    if cfg.lr_grid is not None and (
        not cfg.lr_grid
        or not all(math.isfinite(m) and m > 0 for m in cfg.lr_grid)
        or len(set(cfg.lr_grid)) != len(cfg.lr_grid)
    ):
        raise ConfigError(
            f"Invalid lr_grid={list(cfg.lr_grid)}: give distinct positive finite multiples of each "
            "optimizer's lr, e.g. lr_grid=[0.01,0.1,1,10,100], or null."
        )
    names = [(o.name, hyperparameters(o)) for o in optimizer_cfgs]
    if len(set(names)) != len(names):
        repeated = sorted({name for name, _ in names if names.count((name, _)) > 1})
        raise ConfigError(
            f"Optimizer {', '.join(repeated)} is listed twice with the same hyperparameters; "
            "each setting of an optimizer may be trained once per job."
        )
    model = models.build_model(cfg.model, cfg.dataset, seed=0)  # a throwaway copy
    for optimizer_cfg in optimizer_cfgs:
        build.fill_from_protocol(optimizer_cfg, total_steps)
        optimizer_checks.check_optimizer_config(optimizer_cfg, model)
    return steps
