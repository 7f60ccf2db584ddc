"""A job as plain data: what it trains, on what, and how.

The composed Hydra config (a DictConfig) stops at this boundary: `compose.jobs.make_plan` composes
and checks a command's job and turns it into a `Plan`. The engine, results, stats, plots
and report take Plans, the specs below, plain dicts and DataFrames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from optbench.config.schema import fingerprint, hyperparameters, run_key, seed_list
from optbench.data import prepare
from optbench.errors import ConfigError
from optbench.optimizers.traits import Traits, traits_of


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer setting: its name, its resolved config (the class in `_target_`,
    `elementwise`, the hyperparameters) and its traits (what the engine must know of it,
    made once here). Two specs are equal when name and hyperparameters are: that is what
    tells two settings apart in runs.csv."""

    name: str
    hyperparameters: str  # config.schema.hyperparameters: canonical JSON of every key but the name
    config: dict = field(compare=False, repr=False)
    traits: Traits = field(compare=False, repr=False)

    @classmethod
    def of(cls, config: Mapping) -> OptimizerSpec:
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        config = dict(config)
        return cls(str(config["name"]), hyperparameters(config), config, traits_of(config))

    @property
    def lr(self) -> float:
        """The configured lr; NaN for an optimizer without one (A2Grad sets its own)."""
        lr = self.config.get("lr")
        return math.nan if lr is None else float(lr)


@dataclass(frozen=True)
class RunSpec:
    """One run: an optimizer setting and a seed."""

    optimizer: OptimizerSpec
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        """config.schema.run_key: how runs.csv and a checkpoint name this run."""
        return run_key(self.optimizer.name, self.optimizer.hyperparameters, self.seed)


@dataclass(frozen=True)
class StepPlan:
    """The steps of a job: how many, how many examples each, and after which the runs are
    evaluated. (The learning-rate schedule is `Plan.lr_schedule`, training/lr_schedules.py.)"""

    batch_size: int  # examples per step
    steps_per_epoch: int  # ceil(n_train / batch_size): the last batch of an epoch may be smaller
    total_steps: int
    eval_steps: list[int]  # steps after which every run is evaluated (always ends at total_steps)


def make_step_plan(train: Mapping, n_train: int) -> StepPlan:
    """The steps of a protocol's `train` settings on n_train examples (checks.py has made
    sure the batch fits)."""
    batch_size = n_train if train["batch_size"] == "full" else train["batch_size"]
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = (
        train["steps"] if train["steps"] is not None else train["epochs"] * steps_per_epoch
    )
    every = train["eval_every"] if train["eval_every"] is not None else steps_per_epoch
    eval_steps = list(range(every, total_steps + 1, every))
    if not eval_steps or eval_steps[-1] != total_steps:
        eval_steps.append(total_steps)
    return StepPlan(batch_size, steps_per_epoch, total_steps, eval_steps)


def resolve_device(device: str) -> str:
    """The device a job trains on: cpu or cuda, for device=auto CUDA where torch sees a
    CUDA device, else the CPU; device=cuda is refused where torch sees none."""
    import torch  # slow to import: not for --help

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but PyTorch sees no CUDA device on this machine; valid choices: "
            "auto (CUDA when present, else CPU), cpu, cuda."
        )
    return device


@dataclass(frozen=True)
class Plan:
    """Everything one job trains and how, as plain data."""

    experiment: str
    dataset: dict  # name, input_shape, num_classes, train_size, normalize
    model: dict  # name and the model's constructor arguments
    train: dict  # batch_size, epochs, steps, eval_every, test_batch_size
    lr_schedule: dict  # name and its keys (training/lr_schedules.py)
    logger: dict  # where else results go (results/loggers.py)
    optimizers: list[OptimizerSpec]  # in the order the job trains and reports them
    seeds: list[int]
    steps: StepPlan  # the training's steps, made once with the plan
    device: str  # cpu or cuda: the config's device, auto resolved once with the plan
    threads: int | None  # workers on the CPU; None: torch's default (the physical cores)
    workers: str  # processes or threads (training.workers)
    stack_runs: str  # auto, always or never (training.loop.should_stack)
    allow_tf32: bool
    data_dir: Path
    resume: bool
    # trials, seed: `optbench tune`'s random search; for a workload of `suite` or `targets`,
    # trials is None unless tuning.trials=K was given (then each optimizer is tuned first)
    tuning: dict
    config: dict  # the whole resolved config, as config.yaml records it
    fingerprint: str  # config.schema.fingerprint: what "the same protocol" means

    @classmethod
    def of(cls, cfg: DictConfig, optimizers: list[OptimizerSpec], steps: StepPlan) -> Plan:
        """The plan of a composed, checked config training the given optimizer settings
        for the given steps (checks.check_config made them)."""
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        config.pop("for_choice", None)  # merged into dataset, model and optimizer already
        return cls(
            experiment=config["experiment_name"],
            dataset=config["dataset"],
            model=config["model"],
            train=config["train"],
            lr_schedule=config["schedule"],
            logger=config["logger"],
            optimizers=list(optimizers),
            seeds=seed_list(cfg.seeds),
            steps=steps,
            device=resolve_device(config["device"]),
            threads=config["threads"],
            workers=config["workers"],
            stack_runs=config["stack_runs"],
            allow_tf32=config["allow_tf32"],
            data_dir=prepare.resolve_data_dir(config["data_dir"]),
            resume=config["resume"],
            tuning=config["tuning"],
            config=config,
            fingerprint=fingerprint(cfg),
        )

    @property
    def runs(self) -> list[RunSpec]:
        """Every (optimizer setting, seed) run, optimizer by optimizer."""
        return [RunSpec(optimizer, seed) for optimizer in self.optimizers for seed in self.seeds]

    def trained_for(self, train: dict) -> Plan:
        """The plan with other `train` settings, and the steps they make."""
        steps = make_step_plan(train, prepare.train_size(self.dataset))
        return replace(self, train=train, steps=steps)

    def choosing_on_validation(self) -> Plan:
        """The plan whose runs a choice (a tuning trial) may be made on: this plan where its
        dataset holds out a validation set; else the same protocol holding out
        prepare.default_validation_size of its training examples (a protocol of its own,
        with its own fingerprint and steps), so that nothing is ever chosen on the test set."""
        if prepare.validation_size(self.dataset):
            return self
        dataset = {**self.dataset, "validation_size": prepare.default_validation_size(self.dataset)}
        config = {**self.config, "dataset": dataset}
        steps = make_step_plan(self.train, prepare.train_size(dataset))
        return replace(
            self, dataset=dataset, config=config, fingerprint=fingerprint(config), steps=steps
        )
