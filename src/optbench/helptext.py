"""What `optbench run --help` (and sweep's and tune's) prints: the config groups a user
chooses from, the optimizers grouped by where they come from, wrapped to the terminal.

Hydra's own help would also list the for_choice_* groups (the presets' values, which
optbench registers as groups: config.schema.register_preset_values) and every optimizer on one
line. Reads config files only (no Hydra, no torch), so it answers at once."""

from __future__ import annotations

import importlib.resources
import shutil
import textwrap
from collections.abc import Iterable
from pathlib import Path

import yaml

from optbench.config.schema import CONFIG_NAME, CONFIG_PACKAGE
from optbench.optimizers import catalog

COMMANDS = {
    "run": "Train one optimizer (optimizer=NAME) over several seeds.",
    "sweep": "Train every optimizer of the experiment (or optimizers=[A,B,...]) in one job.",
    "tune": "Equal tuning budgets: tuning.trials random-search trials per optimizer.",
}
GROUPS = {  # the groups a user chooses from, in the order shown, with what each chooses
    "experiment": "the protocol: dataset, model, steps, seeds, evaluation points",
    "dataset": "the data",
    "model": "the network",
    "optimizer": "the optimizer (`optbench optimizers` says how each trains, what it needs)",
    "schedule": "the learning-rate schedule",
    "logger": "where else the results go",
    "regime": "gradient-descent regime on top of the protocol",
    "debug": "smoke: a tiny version of any command, to try it in seconds",
}
MIN_WIDTH = 40  # narrower terminals get lines of this width


def _options(group: str, folders: list[Path]) -> list[str]:
    """The option names of a group: optbench's files, then those on the user's search path."""
    ours = importlib.resources.files(CONFIG_PACKAGE) / group
    names = [p.name.removesuffix(".yaml") for p in ours.iterdir() if p.name.endswith(".yaml")]
    for folder in folders:
        names += [p.stem for p in Path(folder).glob(f"{group}/*.yaml")]
    return sorted(set(names))


def _defaults() -> dict[str, str | None]:
    """Each group's default choice, from the primary config's defaults list."""
    path = importlib.resources.files(CONFIG_PACKAGE) / f"{CONFIG_NAME}.yaml"
    defaults = yaml.safe_load(path.read_text())["defaults"]  # as written: unresolved
    return {k: v for item in defaults if isinstance(item, dict) for k, v in item.items()}


def optimizer_sources(folders: list[Path]) -> dict[str, list[str]]:
    """The optimizer names by source: torch.optim, optbench's own, pytorch_optimizer's
    registry, the configs on the user's search path (empty sources left out)."""
    grouped: dict[str, list[str]] = {}
    for entry in catalog.entries(folders):
        if entry.source.startswith("pytorch_optimizer"):
            source = f"{entry.source}'s registry"
        elif entry.source in ("optbench", "your class"):  # custom: your class by _target_
            source = "optbench's own"
        else:
            source = entry.source
        grouped.setdefault(source, []).append(entry.name)
    rank = {"torch.optim": 0, "optbench's own": 1, catalog.SEARCH_PATH: 3}  # the registry: 2
    return dict(sorted(grouped.items(), key=lambda source: rank.get(source[0], 2)))


def text(command: str, overrides: Iterable[str] = (), width: int | None = None) -> str:
    """The help of a training command, every line at most `width` characters (the
    terminal's, from $COLUMNS or the terminal itself, when not given)."""
    width = max(width or shutil.get_terminal_size().columns, MIN_WIDTH)
    folders = catalog.searchpath_folders(overrides)
    defaults = _defaults()

    def wrap(line: str, indent: int) -> list[str]:
        return textwrap.wrap(line, width, subsequent_indent=" " * indent, break_on_hyphens=False)

    lines = wrap(f"usage: optbench {command} [GROUP=OPTION ...] [KEY=VALUE ...] [-m]", 6)
    lines += ["", *wrap(COMMANDS[command], 0), "", "Config groups (GROUP=OPTION):"]
    for group, what in GROUPS.items():
        default = defaults.get(group)
        lines += wrap(f"  {group}" + (f" (default {default})" if default else "") + f": {what}", 6)
        if group == "optimizer":
            for source, names in optimizer_sources(folders).items():
                lines += wrap(f"    {source}: {', '.join(names)}", 6)
        else:
            lines += wrap(f"    {', '.join(_options(group, folders))}", 6)
    footer = (
        "Any setting: KEY=VALUE (seeds=5, optimizer.lr=0.05, hydra.run.dir=DIR); "
        f"`optbench {command} --cfg job [OVERRIDES]` prints every setting and its value; "
        "-m OVERRIDES with comma-separated values runs one job per value (a Hydra "
        f"multirun); `optbench {command} --hydra-help` lists Hydra's own flags; your own "
        "config folders: hydra.searchpath=[file://DIR] (docs/optimizers.md)."
    )
    return "\n".join([*lines, "", *wrap(footer, 0)]) + "\n"
