"""The command line's overrides, read before Hydra composes them and reworded after: the
closed schema (+KEY=VALUE only for an optimizer's hyperparameters), Hydra's grammar (a path
with spaces needs quotes), and Hydra's and OmegaConf's errors as one paragraph naming the
valid choices."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re

from hydra import compose
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench.config.schema import CONFIG_NAME, CONFIG_PACKAGE, Config
from optbench.errors import ConfigError

# Keys of the schema that come with an experiment preset, not from the command line.
NOT_SETTABLE = ("experiment_name", "for_choice")
# Where a dataset of your own takes its class's arguments (data/custom.py).
DATASET_ARGUMENTS = ("dataset.args.", "dataset.train_args.", "dataset.test_args.")


def check_keys(overrides: list[str]) -> None:
    """The schema is closed: refuse a key the command line adds (+KEY=VALUE) outside an
    optimizer's hyperparameters and a model's or dataset's arguments (each checked against
    its class) and Hydra's own settings; such a key would change the fingerprint and nothing else.
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
        if name.startswith(
            ("optimizer.", "model.", *DATASET_ARGUMENTS, "hydra.", "hydra/", "for_choice")
        ):
            # a model's or dataset's own argument (model=custom): checked against it;
            # for_choice: _check_for_choice says what to do instead
            continue
        if name in keys or name in groups():
            raise ConfigError(
                f"{override}: {name} is already part of the config; set it without the '+': "
                f"{override.lstrip('+')}."
            )
        from optbench.optimizers.catalog import close_matches

        close = close_matches(name, keys)
        meant = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{override}: {name!r} is not a key of optbench's config, and +KEY=VALUE adds "
            "only an optimizer's hyperparameters (+optimizer.KEY=VALUE) and a model's or "
            "dataset's arguments (+model.KEY=VALUE, +dataset.args.KEY=VALUE); "
            f"{meant}valid keys: {', '.join(keys)}."
        )


def groups() -> list[str]:
    """The config groups a command line chooses from (dataset=, regime=, debug=, ...)."""
    folders = importlib.resources.files(CONFIG_PACKAGE).iterdir()
    return [f.name for f in folders if f.is_dir() and not f.name.startswith(("for_", "_"))]


def check_grammar(overrides: list[str]) -> None:
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


def one_paragraph(error: BaseException, overrides: list[str] = ()) -> str:
    """Hydra's and OmegaConf's errors, reworded as one paragraph naming the valid choices."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        yours = (
            f" A {group} of your own: {group}=custom {group}._target_=... "
            "(docs/custom_workloads.md)."
            if group in ("model", "dataset")
            else ""
        )
        return (
            f"Unknown {group} {name!r}; {choices(name, error.options)}. "
            f"Choose one with {group}=NAME.{yours}"
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


def choices(name: str, options: list[str]) -> str:
    """The valid choices of a group, or for the optimizers (over 150) the close matches."""
    if len(options) <= 30:
        return f"valid choices: {', '.join(options)}"
    from optbench.optimizers.catalog import close_matches

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
