"""The checks every job passes before any training starts: every value that would fail
later is refused now, with one paragraph naming it and the valid choices."""

from __future__ import annotations

import math

from omegaconf import DictConfig, open_dict

from optbench.config.schema import (
    check_target,
    check_train,
    hyperparameters,
    positive_int,
    seed_list,
)
from optbench.data import prepare
from optbench.errors import ConfigError
from optbench.files import source_sha256
from optbench.plan import StepPlan, make_step_plan
from optbench.training import lr_schedules


def check_config(cfg: DictConfig, optimizer_cfgs: list[DictConfig]) -> StepPlan:
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

    in_memory.check_dataset_config(cfg.dataset, prepare.resolve_data_dir(cfg.data_dir))
    n_train = prepare.train_size(cfg.dataset)
    if cfg.train.batch_size != "full" and cfg.train.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({n_train} examples); use at most that, or train.batch_size=full."
        )
    models.check_model_config(cfg.model)
    steps = make_step_plan(cfg.train, n_train)
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
    from optbench.data import custom

    if models.is_custom(cfg.model) or custom.is_custom(cfg.dataset):
        model = check_model_on_a_batch(cfg.model, cfg.dataset)
    else:
        model = models.build_model(cfg.model, cfg.dataset, seed=0)  # a throwaway copy
    for optimizer_cfg in optimizer_cfgs:
        build.fill_from_protocol(optimizer_cfg, total_steps)
        optimizer_checks.check_optimizer_config(optimizer_cfg, model)
        record_optimizer_source(optimizer_cfg)
    return steps


# The packages whose classes are versioned by config.yaml's provenance (torch's and
# pytorch_optimizer's versions, optbench's revision): an optimizer from anywhere else is a
# user's, and the SHA-256 of its file joins its hyperparameters.
VERSIONED_PACKAGES = ("torch", "pytorch_optimizer", "optbench")


def record_optimizer_source(optimizer: DictConfig) -> None:
    """Set optimizer.source_sha256 for a user's optimizer class: two versions of its file
    are two settings in runs.csv, never one."""
    from optbench.optimizers import build

    if str(optimizer._target_).split(".")[0] in VERSIONED_PACKAGES:
        return
    with open_dict(optimizer):
        optimizer.source_sha256 = source_sha256(build.optimizer_class(optimizer))


def check_model_on_a_batch(model: DictConfig, dataset: DictConfig):
    """Build a user's model (model._target_), or a built-in one for a user's dataset, and
    run it on a throwaway batch of two of the dataset's inputs, in training mode as it will
    train: it must build with its arguments, be a torch.nn.Module with parameters, and
    return float logits [2, dataset.num_classes]. Records the SHA-256 of the file that
    defines a user's model in model.source_sha256 (part of the protocol). Returns the
    throwaway model."""
    import torch

    from optbench import models

    what = f"model._target_={model._target_}" if models.is_custom(model) else f"model={model.name}"
    try:
        built = models.build_model(model, dataset, seed=0)
    except ConfigError:
        raise
    except Exception as error:
        kwargs = (
            models.custom_kwargs(model, dataset)
            if models.is_custom(model)
            else {"input_shape": list(dataset.input_shape), **models.model_kwargs(model)}
        )
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ConfigError(
            f"{what} could not be built with ({given}): {_one_line(error)}. Set its "
            "arguments with +model.KEY=VALUE (docs/custom_workloads.md)."
        ) from None
    if not isinstance(built, torch.nn.Module):
        raise ConfigError(
            f"{what} returned a {type(built).__name__}, not a torch.nn.Module; name a "
            "Module class, or a function returning a Module."
        )
    if not any(True for _ in built.parameters()):
        raise ConfigError(
            f"{what} has no parameters: an optimizer would have nothing to train. Give a "
            "model with at least one torch.nn.Parameter."
        )
    shape = [2, *dataset.input_shape]
    batch = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    try:  # in a fork of torch's generator: the model's dropout draws leave it as it was
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits = built(batch)
    except Exception as error:
        raise ConfigError(
            f"{what} fails on a batch of inputs of shape {shape} (dataset.input_shape="
            f"{list(dataset.input_shape)}): {_one_line(error)}. A model takes a batch "
            "[batch, *input_shape] and returns logits [batch, classes]."
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"{what} returns a {type(logits).__name__}, not a tensor: a model returns the "
            "logits [batch, classes] as one tensor."
        )
    if not logits.is_floating_point():
        raise ConfigError(
            f"{what} returns logits of dtype {str(logits.dtype).removeprefix('torch.')}: "
            "cross-entropy needs floating-point logits; return them as floats."
        )
    if list(logits.shape) != [2, dataset.num_classes]:
        raise ConfigError(
            f"{what} returns logits of shape {list(logits.shape)} for a batch of 2, not "
            f"[2, {dataset.num_classes}] ([batch, classes], dataset.num_classes="
            f"{dataset.num_classes}); give the model that many outputs (e.g. "
            f"+model.num_classes={dataset.num_classes} where it takes num_classes)."
        )
    if models.is_custom(model):
        with open_dict(model):
            model.source_sha256 = source_sha256(models.custom_builder(model))
    return built


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
