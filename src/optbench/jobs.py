"""A command's jobs: composed by Hydra, checked, and turned into Plans.

This is where the DictConfig stops. Before Hydra starts a job (and creates its output
folder), `check_command_line` composes and checks every job the command line asks for, so
bad input fails in seconds with one paragraph and nothing written; it returns their Plans,
and each job takes its own from them (composing a config takes about 0.3 s an optimizer).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from optbench import catalog, preparation
from optbench.checks import check_config
from optbench.config import (
    CONFIG_NAME,
    CONFIG_PACKAGE,
    PRESET_GROUPS,
    REGISTERED_PRESETS,
    Config,
    ConfigError,
    yaml_error_message,
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
    _check_keys(overrides)
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


# Keys of the schema that come with an experiment preset, not from the command line.
NOT_SETTABLE = ("experiment_name", "for_choice")


def _check_keys(overrides: list[str]) -> None:
    """The schema is closed: refuse a key the command line adds (+KEY=VALUE) outside an
    optimizer's hyperparameters (each optimizer takes its own, checked against its class)
    and Hydra's own settings; such a key would change the fingerprint and nothing else.
    experiment_name comes with the experiment preset, so it is not set here either."""
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in NOT_SETTABLE]
    for override in overrides:
        key = override.split("=", 1)[0]
        if key == "experiment_name":
            raise ConfigError(
                f"{override}: experiment_name is not a key to set; it is the name of the "
                "experiment preset, which experiment=NAME chooses (e.g. experiment=mnist_ffnn; "
                "a preset of your own goes on hydra.searchpath). The MLflow experiment's name "
                "is logger.experiment_name=NAME."
            )
        if not key.startswith("+"):
            continue  # a key the schema lacks fails at composition, naming the valid keys
        name = key.lstrip("+")
        if name.startswith(("optimizer.", "hydra.", "hydra/", "for_choice")):
            continue  # for_choice: _check_for_choice says what to do instead
        if name in keys or name in _groups():
            raise ConfigError(
                f"{override}: {name} is already part of the config; set it without the '+': "
                f"{override.lstrip('+')}."
            )
        from optbench.catalog import close_matches

        close = close_matches(name, keys)
        meant = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{override}: {name!r} is not a key of optbench's config, and +KEY=VALUE adds "
            "only an optimizer's hyperparameters (+optimizer.KEY=VALUE); "
            f"{meant}valid keys: {', '.join(keys)}."
        )


def _groups() -> list[str]:
    """The config groups a command line chooses from (dataset=, regime=, debug=, ...)."""
    folders = importlib.resources.files(CONFIG_PACKAGE).iterdir()
    return [f.name for f in folders if f.is_dir() and not f.name.startswith(("for_", "_"))]


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
        return _compose_and_plan(command, list(overrides))[0]


def _compose_and_plan(
    command: str, overrides: list[str], multirun: bool = False
) -> tuple[Plan, Path]:
    """Compose one job's config and make its plan; Hydra's and OmegaConf's errors become a
    ConfigError of one paragraph. Also the folder the job will write (hydra.run.dir, or
    hydra.sweep.dir for a multirun), as Hydra will name it. Needs an initialised Hydra."""
    try:
        _check_keys(overrides)  # before Hydra's own, less helpful, messages
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
        raise ConfigError(_one_paragraph(error, overrides)) from None


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
                f"{_choices(name, error.options or [])}."
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
        _check_job_folders(_output_root(args), jobs)
    from optbench import loggers  # with pandas: not for the commands that fail before

    for key, plan in plans.items():  # a logger's store: reachable and writable, before training
        loggers.check_destination(plan.logger, folders[key])
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
    _check_grammar(parsed.overrides)
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


def _check_grammar(overrides: list[str]) -> None:
    """Refuse an override that Hydra's grammar cannot read, with the quoting that fixes the
    usual cause: a value with spaces or special characters (a path) must be quoted for
    Hydra, inside the quotes of the shell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as error:
            key, equals, value = override.partition("=")
            if not equals:
                raise ConfigError(
                    f"{override!r} is not an override (KEY=VALUE): a value with spaces must "
                    "be quoted for the shell and for Hydra, e.g. 'hydra.run.dir=\"my results\"'."
                ) from None
            said = " ".join(str(error).split()).split(" See https")[0].rstrip(":")
            raise ConfigError(
                f"Hydra cannot read the override {override!r} ({said}): a value with spaces "
                "or characters such as ~ ( ) [ ] , = must be quoted for Hydra, inside the "
                f"shell's quotes, e.g. '{key}=\"{value}\"'."
            ) from None


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


def check_writable(
    folder: Path, way_out: str = "hydra.run.dir=DIR (hydra.sweep.dir=DIR for -m)"
) -> None:
    """Fail now, not after training, when folder cannot be created or written."""
    problem = unwritable_because(Path(folder))
    if problem:
        raise ConfigError(
            f"Cannot write results to {shortened(folder)} ({problem}). Choose a folder you "
            f"can write with {way_out}."
        )


# Room for the files a job writes inside its folder (.runs.csv.<temporary>,
# checkpoint.pt.unreadable-<time>, tensorboard/<optimizer>/seed_<n>/...).
ROOM_FOR_FILES = 100


def unwritable_because(folder: Path) -> str | None:
    """Why folder cannot be created or written, in a few words; None when it can. Probes
    with a temporary folder inside its deepest existing ancestor, and leaves nothing behind."""
    folder = folder.absolute()
    # os.path's tests, not Path's: they answer False for a name too long to look up
    for path in (folder, *folder.parents):
        if os.path.islink(path) and not os.path.exists(path):  # mkdir fails: the name is taken
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    existing = folder
    while not os.path.exists(existing):
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    longest = os.pathconf(existing, "PC_NAME_MAX")
    for part in folder.relative_to(existing).parts:
        if len(os.fsencode(part)) > longest:
            return (
                f"the name {shortened(part, 40)} has {len(os.fsencode(part))} bytes, and the "
                f"file system allows {longest}"
            )
    if len(os.fsencode(str(folder))) + ROOM_FOR_FILES > os.pathconf(existing, "PC_PATH_MAX"):
        return f"the path is {len(os.fsencode(str(folder)))} bytes long, too long for its files"
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        return " ".join(str(error).split())
    return None


def shortened(text, keep: int = 100) -> str:
    """A long name cut to its first `keep` characters, so that a message stays readable."""
    text = str(text)
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


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
