"""A command's jobs: composed by Hydra, checked, and turned into Plans.

This is where the DictConfig stops. Before Hydra starts a job (and creates its output
folder), `check_command_line` composes and checks every job the command line asks for, so
bad input fails in seconds with one paragraph and nothing written; it returns their Plans,
and each job takes its own from them (composing a config takes about 0.3 s an optimizer).
"""

from __future__ import annotations

import importlib.resources
import re
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench import catalog, preparation
from optbench.checks import check_config
from optbench.config import (
    CONFIG_NAME,
    CONFIG_PACKAGE,
    PRESET_GROUPS,
    REGISTERED_PRESETS,
    ConfigError,
)
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
    _check_for_choice(cfg, overrides)
    if command in ("tune", "suite", "targets") and cfg.lr_grid is not None:
        raise ConfigError(
            f"lr_grid={list(cfg.lr_grid)} does not apply to `optbench {command}`, which "
            "compares one setting of each optimizer (tuning.trials tunes it); drop lr_grid, "
            "or use it with `optbench sweep`."
        )
    from optbench.optimizers import expand_lr_grid  # torch is slow to import: not for --help

    chosen = [cfg.optimizer] if command == "run" else _sweep_optimizers(cfg, overrides)
    _check_not_shadowed([str(o.name) for o in chosen], overrides)
    optimizer_cfgs = chosen if command == "tune" else expand_lr_grid(chosen, cfg.lr_grid)
    check_config(cfg, optimizer_cfgs)
    return Plan.of(cfg, [OptimizerSpec.of(o) for o in optimizer_cfgs])


def _check_for_choice(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse preset values that would be silently ignored: for_choice is merged when Hydra
    composes a preset of optbench's configs/experiment/ (config.register_preset_values)."""
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
        return _compose_and_plan(command, list(overrides))


def _compose_and_plan(command: str, overrides: list[str]) -> Plan:
    """Compose one job's config and make its plan; Hydra's and OmegaConf's errors become a
    ConfigError of one paragraph. Needs an initialised Hydra."""
    try:
        return make_plan(command, compose(CONFIG_NAME, overrides=overrides), overrides)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise ConfigError(_one_paragraph(error, overrides)) from None


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
                f"{_choices(name, error.options or [])}."
            ) from None
        configs.append(composed.optimizer)
    return configs


def check_command_line(command: str, args: list[str]) -> Plans:
    """Compose and check every job, and prepare its dataset, before any of them runs; the
    jobs' plans."""
    plans = {}
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        for overrides in _jobs_of(args):
            plans[job_key(overrides)] = _compose_and_plan(command, overrides)
    check_writable(_output_root(args))
    for name, data_dir in sorted({(p.dataset["name"], p.data_dir) for p in plans.values()}):
        preparation.prepare(name, data_dir)
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


def check_writable(
    folder: Path, way_out: str = "hydra.run.dir=DIR (hydra.sweep.dir=DIR for -m)"
) -> None:
    """Fail now, not after training, when folder cannot be created or written. Probes with
    a temporary folder inside its deepest existing ancestor, and leaves nothing behind."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ConfigError(
            f"Cannot write results to {folder} ({' '.join(str(error).split())}). Choose a "
            f"folder you can write with {way_out}."
        ) from None


def _one_paragraph(error: BaseException, overrides: list[str] = ()) -> str:
    """Hydra's and OmegaConf's errors, reworded as one paragraph naming the valid choices."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return (
            f"Unknown {group} {name!r}; {_choices(name, error.options)}. "
            f"Choose one with {group}=NAME."
        )
    text = str(error)
    if error.__cause__ is not None and str(error.__cause__) not in text:
        text += "\n" + str(error.__cause__)
    lines = [line.strip() for line in text.splitlines()]
    kept = []
    for line in lines:
        if line.startswith(("full_key:", "object_type", "reference_type", "Set the environment")):
            break
        if line and not line.startswith("To append to your config"):  # the schema forbids it
            kept.append(line.rstrip("."))
    text = ": ".join(kept) + "."
    if "not in" in text and "Key '" in text:
        text += " " + _valid_keys_hint(text, overrides)
    return text


def _choices(name: str, options: list[str]) -> str:
    """The valid choices of a group, or for the optimizers (over 150) the close matches."""
    if len(options) <= 30:
        return f"valid choices: {', '.join(options)}"
    from optbench.catalog import close_matches

    close = close_matches(name, options)
    found = f"close matches: {', '.join(close)}" if close else "no close match"
    return f"{found} (`optbench optimizers` lists all {len(options)})"


def _valid_keys_hint(message: str, overrides: list[str]) -> str:
    """For a misspelt key, list the keys that exist at that level of the config."""
    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return ""
    key = match.group(1)
    parent = key.rpartition(".")[0]
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        default = compose(CONFIG_NAME, overrides=others)
    except (HydraException, OmegaConfBaseException):
        default = compose(CONFIG_NAME)
    node = OmegaConf.select(default, parent) if parent else default
    if not isinstance(node, DictConfig):
        return ""
    prefix = f"{parent}." if parent else ""
    return f"Valid keys here: {', '.join(prefix + k for k in node.keys())}."
