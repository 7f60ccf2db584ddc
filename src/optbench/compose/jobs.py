"""A command's jobs: composed by Hydra, checked, and turned into Plans.

This is where the DictConfig stops. Before Hydra starts a job (and creates its output
folder), `check_command_line` composes and checks every job the command line asks for, so
bad input fails in seconds with one paragraph and nothing written; it returns their Plans,
and each job takes its own from them rather than composing its config again (Hydra's
composition is slow: docs/speed.md).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import replace
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from optbench.compose.checks import check_config
from optbench.compose.overrides import check_grammar, check_keys, choices, one_paragraph
from optbench.config.schema import (
    CONFIG_NAME,
    CONFIG_PACKAGE,
    PRESET_GROUPS,
    REGISTERED_PRESETS,
    yaml_error_message,
)
from optbench.data import prepare
from optbench.data.custom import is_custom
from optbench.errors import ConfigError
from optbench.files import check_writable
from optbench.optimizers import catalog
from optbench.plan import OptimizerSpec, Plan

COMMANDS = ("run", "sweep", "tune")  # the commands that train

Plans = dict[tuple[str, ...], Plan]  # a command's jobs' plans, by job_key


def job_key(overrides: list[str]) -> tuple[str, ...]:
    """A job among a command's jobs: its overrides, less Hydra's own."""
    return tuple(o for o in overrides if not o.lstrip("+~").startswith("hydra"))


def make_plan(command: str, cfg: DictConfig, overrides: list[str]) -> Plan:
    """The checked Plan of a composed config: `run` trains its one optimizer, the other
    commands the experiment's list (`optimizers`); `run` and `sweep` at every multiple of
    lr_grid when one is given. Needs an initialised Hydra (inside a Hydra app, or
    initialize_config_module)."""
    check_keys(overrides)
    _check_for_choice(cfg, overrides)
    if command in ("tune", "suite", "targets") and cfg.lr_grid is not None:
        raise ConfigError(
            f"lr_grid={list(cfg.lr_grid)} does not apply to `optbench {command}`, which "
            "compares one setting of each optimizer (tuning.trials tunes it); drop lr_grid, "
            "or use it with `optbench sweep`."
        )
    from optbench.optimizers.build import expand_lr_grid  # torch is slow to import: not for --help

    chosen = [cfg.optimizer] if command == "run" else _sweep_optimizers(cfg, overrides)
    _check_not_shadowed([str(o.name) for o in chosen], overrides)
    optimizer_cfgs = chosen if command == "tune" else expand_lr_grid(chosen, cfg.lr_grid)
    steps = check_config(cfg, optimizer_cfgs)
    plan = Plan.of(cfg, [OptimizerSpec.of(o) for o in optimizer_cfgs], steps)
    if command in ("suite", "targets") and not any(
        o.startswith("tuning.trials=") for o in overrides
    ):  # a workload's optimizers are tuned first only where the command line asks for it
        plan = replace(plan, tuning={**plan.tuning, "trials": None})
    return plan


def _check_for_choice(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse preset values that would be silently ignored: for_choice is merged when Hydra
    composes a preset of optbench's configs/experiment/ (config.schema.register_preset_values)."""
    given = [o for o in overrides if o.lstrip("+~").startswith("for_choice")]
    if given:
        raise ConfigError(
            f"{given[0]}: for_choice holds an experiment preset's own values, not set from "
            "the command line; set the value itself instead, e.g. optimizer.lr=0.1."
        )
    unknown = [group for group in cfg.for_choice if group not in PRESET_GROUPS]
    if unknown:
        raise ConfigError(
            f"Experiment {cfg.experiment_name!r}: for_choice.{unknown[0]} is not a group a "
            f"preset sets values for; valid groups: {', '.join(PRESET_GROUPS)}."
        )
    if cfg.for_choice and cfg.experiment_name not in REGISTERED_PRESETS:
        raise ConfigError(
            f"Experiment {cfg.experiment_name!r} has a for_choice section, which applies to "
            "the presets in optbench's configs/experiment/ only; put the preset there, or "
            "set its values in the experiment file directly (then for every choice)."
        )


def _check_not_shadowed(names: list[str], overrides: list[str]) -> None:
    """Refuse a user's optimizer file that optbench's own of the same name would hide:
    optbench's configs come first in Hydra's search path, before hydra.searchpath's."""
    for folder in catalog.searchpath_folders(overrides):
        for name in names:
            mine = Path(folder) / "optimizer" / f"{name}.yaml"
            ours = importlib.resources.files(CONFIG_PACKAGE) / "optimizer" / f"{name}.yaml"
            if mine.is_file() and ours.is_file():
                raise ConfigError(
                    f"{mine} has the name of optbench's optimizer {name!r} (`optbench "
                    "optimizers` lists them), which Hydra finds first, so yours would be "
                    f"ignored; rename your file and its `name`, e.g. my_{name}.yaml."
                )


def compose_plan(command: str, *overrides: str) -> Plan:
    """The Plan of `optbench COMMAND OVERRIDES...` (one job), composed and checked."""
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return _compose_and_plan(command, list(overrides))[0]


def _compose_and_plan(
    command: str, overrides: list[str], multirun: bool = False
) -> tuple[Plan, Path]:
    """Compose one job's config and make its plan; Hydra's and OmegaConf's errors become a
    ConfigError of one paragraph. Also the folder the job will write (hydra.run.dir, or
    hydra.sweep.dir for a multirun), as Hydra will name it. Needs an initialised Hydra."""
    try:
        check_keys(overrides)  # before Hydra's own, less helpful, messages
        cfg = compose(CONFIG_NAME, overrides=overrides, return_hydra_config=True)
        folder = _job_folder(cfg, multirun)
        with open_dict(cfg):
            del cfg["hydra"]  # the job's own config, as the Hydra app gets it
        return make_plan(command, cfg, overrides), folder
    except ConfigError:
        raise
    except YAMLError as error:  # a config file of the user's that YAML cannot read
        raise ConfigError(yaml_error_message(error)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise ConfigError(one_paragraph(error, overrides)) from None


def _job_folder(cfg: DictConfig, multirun: bool) -> Path:
    """The folder Hydra will create for a job: its hydra.run.dir (hydra.sweep.dir for a
    multirun) resolved as Hydra resolves it, the job's override_dirname included."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    hydra_config = HydraConfig.instance()
    try:
        hydra_config.set_config(cfg)  # what the ${hydra:...} resolver reads
        value = OmegaConf.select(cfg, key)
    finally:
        OmegaConf.set_readonly(cfg.hydra, False)
        hydra_config.cfg = None  # the Hydra app sets its own
    if value is None or not str(value).strip():
        raise ConfigError(
            f"{key}= is empty: Hydra would write the job's files into the current folder, "
            f"among whatever else is there. Give a folder ({key}=DIR), or leave {key} out "
            "for the default, outputs/<experiment>/<overrides>/ (multirun/... for -m)."
        )
    return Path(str(value))


def _sweep_optimizers(cfg: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """Compose the config once per optimizer in cfg.optimizers, so each gets its own file's
    hyperparameters and the experiment preset's values for it (for_choice)."""
    if not cfg.optimizers:
        given = any(o.split("=", 1)[0].lstrip("+~") == "optimizers" for o in overrides)
        whose = "optimizers=[] lists" if given else f"Experiment {cfg.experiment_name!r} lists"
        raise ConfigError(f"{whose} no optimizer to sweep; give some with optimizers=[sgd,adam].")
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == "optimizer"]
    configs = []
    for name in cfg.optimizers:
        try:
            composed = compose(CONFIG_NAME, overrides=kept + [f"optimizer={name}"])
        except MissingConfigException as error:
            raise ConfigError(
                f"Unknown optimizer {name!r} in optimizers={list(cfg.optimizers)}; "
                f"{choices(name, error.options or [])}."
            ) from None
        configs.append(composed.optimizer)
    return configs


def check_command_line(command: str, args: list[str]) -> Plans:
    """Compose and check every job, and prepare its dataset, before any of them runs; the
    jobs' plans."""
    plans, folders = {}, {}
    multirun = "-m" in args or "--multirun" in args
    jobs = _jobs_of(args)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        for overrides in jobs:
            key = job_key(overrides)
            plans[key], folders[key] = _compose_and_plan(command, overrides, multirun)
    way_out = "hydra.sweep.dir=DIR" if multirun else "hydra.run.dir=DIR"
    for folder in sorted(set(folders.values())) or [_output_root(args)]:
        check_writable(folder, way_out)
    if multirun:
        for folder in sorted(set(folders.values())):  # the sweep folder, resolved
            _check_job_folders(folder, jobs)
    from optbench.results import loggers

    for key, plan in plans.items():  # a logger's store: reachable and writable, before training
        loggers.check_destination(plan.logger, folders[key])
    built_in = {(p.dataset["name"], p.data_dir) for p in plans.values() if not is_custom(p.dataset)}
    for name, data_dir in sorted(built_in):  # a dataset of your own was read when checked
        prepare.prepare(name, data_dir)
    return plans


def _jobs_of(args: list[str]) -> list[list[str]]:
    """The override list of every job a command line asks for; none where the command trains
    nothing (--help, --cfg), reads configs from elsewhere, or uses a sweep syntax that only
    its sweeper plugin expands: those jobs are checked when they start instead.

    The one place that uses Hydra's private APIs: Hydra parses its own command line (the
    argument parser of hydra.main) and expands a multirun's jobs (its basic sweeper) only
    once a job starts, and offers no public way to do either before."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed, _ = get_args_parser().parse_known_args(args)
    check_grammar(parsed.overrides)
    if (
        parsed.help
        or parsed.hydra_help
        or parsed.cfg
        or parsed.info
        or parsed.shell_completion
        or parsed.config_path
        or parsed.config_dir
        or parsed.config_name
        or parsed.experimental_rerun
    ):
        return []
    if not parsed.multirun:
        return [list(parsed.overrides)]
    try:
        parsed_overrides = OverridesParser.create().parse_overrides(parsed.overrides)
        return BasicSweeper.split_arguments(parsed_overrides, None)[0]
    except HydraException:
        return []


def _output_root(args: list[str]) -> Path:
    """Where the jobs will write: hydra.run.dir / hydra.sweep.dir when given, else the
    default folder (outputs/ or multirun/ under the working directory)."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in args if a.startswith(key)]
    return Path(given[-1] if given else ("multirun" if multirun else "outputs"))


def _check_job_folders(sweep_dir: Path, jobs: list[list[str]]) -> None:
    """A multirun into a sweep folder that already holds jobs: job i writes into folder i,
    so each folder must hold the same choice of the swept values as job i (the same values
    in another order would retrain every job into another job's folder and mix them)."""
    keys = [{o.split("=", 1)[0]: o for o in job_key(job)} for job in jobs]
    swept = {k for k in set().union(*keys) if len({job.get(k) for job in keys}) > 1}
    for number, job in enumerate(keys):
        config = sweep_dir / str(number) / "config.yaml"
        if not swept or not config.is_file():
            continue
        try:
            recorded = list(OmegaConf.load(config).provenance.overrides)
        except (OmegaConfBaseException, OSError, AttributeError, ValueError):
            continue  # not an optbench job's config: the job itself will say so
        theirs = {o.split("=", 1)[0]: o for o in job_key(recorded)}
        differ = [k for k in sorted(swept) if theirs.get(k) != job.get(k)]
        if differ:
            raise ConfigError(
                f"{sweep_dir} already holds the jobs of another multirun: its job {number} "
                f"was trained with {', '.join(str(theirs.get(k)) for k in differ)}, and this "
                f"command's job {number} has {', '.join(str(job.get(k)) for k in differ)}. "
                "Give the swept values in the order of the first command to add to that "
                "sweep, or write elsewhere with hydra.sweep.dir=DIR."
            )
