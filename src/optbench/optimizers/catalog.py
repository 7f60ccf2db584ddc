"""Every optimizer a config can name, where it comes from and how it trains: what
`optbench optimizers` lists, and what an unknown name is matched against. Reads configs and
registry.py's tables only (no torch), so it answers at once."""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from optbench.config.schema import CONFIG_PACKAGE, yaml_error_message
from optbench.errors import ConfigError
from optbench.optimizers import registry

SEARCH_PATH = "configs on your search path"  # the source of a user's own optimizer file

NEEDS_TEXT = {
    "hessian": "Hessian-vector products (backward with create_graph)",
    "muon_groups": "Muon parameter groups (matrices / the rest)",
    "low_rank_groups": "low-rank projection of the weight matrices (rank, update_proj_gap)",
    "model": "takes the model itself",
    "random": "draws random numbers (seeded per run and step)",
}


@dataclass(frozen=True)
class Entry:
    name: str  # what optimizer=NAME takes
    source: str  # torch.optim, optbench, pytorch_optimizer 4.1.0, your class, SEARCH_PATH
    target: str  # the class (_target_)
    trains: str  # stacked (element-wise), alone, or refused
    notes: str  # what it needs besides a gradient, or why it is refused


def unreadable() -> list[str]:
    """A paragraph for each optimizer config in optbench's configs folder that is not valid
    YAML (a file of the user's, most likely): the listing leaves it out and names it."""
    return [problem for _, problem in _own_configs() if isinstance(problem, str)]


def _own_configs() -> list[tuple[str, object]]:
    """(name, config) for each of optbench's own optimizer configs, by name; (name, the
    problem) for one that YAML cannot read."""
    folder = importlib.resources.files(CONFIG_PACKAGE) / "optimizer"
    loaded = []
    for name in sorted(registry.own_configs()):
        try:
            loaded.append((name, OmegaConf.load(str(folder / f"{name}.yaml"))))
        except YAMLError as error:
            loaded.append((name, yaml_error_message(error)))
    return loaded


def searchpath_folders(overrides: Iterable[str]) -> list[Path]:
    """The folders a hydra.searchpath=[...] override adds to Hydra's search path (the last
    such override wins, as in Hydra), given as file:// or plain paths; pkg:// entries name
    packages, not folders, and are left out."""
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra.searchpath=")]
    items = (
        [item.strip().strip("'\"") for item in given[-1].strip("[]").split(",")] if given else []
    )
    return [Path(item.removeprefix("file://")) for item in items if item and "pkg://" not in item]


def user_entries(folders: Iterable[Path]) -> list[Entry]:
    """The optimizer files of a user's config folders (FOLDER/optimizer/NAME.yaml), by name."""
    found = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(
                f"hydra.searchpath names {folder}, which is not a folder; give your config "
                "folder as hydra.searchpath=[file:///absolute/path/to/it]."
            )
        for path in sorted(Path(folder).glob("optimizer/*.yaml")):
            try:
                config = OmegaConf.load(path)
            except (YAMLError, OmegaConfBaseException) as error:
                config = f"not valid YAML ({str(error).splitlines()[0]})"
            if not OmegaConf.is_dict(config):
                raise ConfigError(
                    f"{path} is {config if isinstance(config, str) else 'not a mapping of keys'}"
                    "; fix the file, or take its folder off hydra.searchpath."
                )
            target = str(config.get("_target_", ""))
            found.append(Entry(path.stem, SEARCH_PATH, target, _trains(config), ""))
    return found


def entries(searchpath: Iterable[Path] = ()) -> list[Entry]:
    """optbench's own optimizer configs, then pytorch_optimizer's registry, by name, then
    the optimizer files of the folders on a user's search path; an own config that is not
    valid YAML is left out (unreadable() names it)."""
    own = []
    for name, config in _own_configs():
        if isinstance(config, str):
            continue
        target = str(config.get("_target_")) if not OmegaConf.is_missing(config, "_target_") else ""
        source = (
            "torch.optim"
            if target.startswith("torch.optim")
            else ("your class" if not target else "optbench")
        )
        notes = "step(closure): several gradients a step" if name == "lbfgs" else ""
        own.append(Entry(name, source, target or "optimizer._target_=...", _trains(config), notes))
    configs = registry.configs()
    library = [_library_entry(configs[name]) for name in sorted(configs)]
    return own + library + user_entries(searchpath)


def _trains(config) -> str:
    return "stacked" if config.get("elementwise", False) else "alone"


def _library_entry(config: dict) -> Entry:
    source = f"pytorch_optimizer {registry.version()}"
    refusal = registry.refusal(config)
    if refusal:
        return Entry(config["name"], source, config["_target_"], "refused", refusal)
    notes = [NEEDS_TEXT[need] for need in sorted(registry.needs(config))]
    entry = registry.entry(config)
    if entry["step_needs_closure"]:
        notes.append("step(closure): evaluates the loss itself")
    if entry["train_eval_modes"]:
        notes.append("evaluated at its averaged weights (eval mode)")
    from_protocol = registry.FROM_PROTOCOL.get(registry.registry_name(config), {})
    if from_protocol:
        notes.append(f"{', '.join(from_protocol)} from the protocol")
    if config.get("lr", 0) is None:
        notes.append("lr null: the class sets its own")
    return Entry(config["name"], source, config["_target_"], _trains(config), "; ".join(notes))


def close_matches(name: str, options: list[str]) -> list[str]:
    """The options nearest to a misspelt name (case aside), best first."""
    lowered = {option.lower(): option for option in options}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=6, cutoff=0.6)
    return [lowered[match] for match in found]


def text(markdown: bool = False, searchpath: Iterable[Path] = ()) -> str:
    """The listing, as aligned columns or as a Markdown table."""
    rows = [(e.name, e.source, e.trains, e.notes or "-") for e in entries(searchpath)]
    header = ("optimizer", "from", "trains", "needs, or why refused")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)] + [0]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    counts = {trains: sum(row[2] == trains for row in rows) for trains in ("stacked", "alone")}
    refused = sum(row[2] == "refused" for row in rows)
    summary = (
        f"{len(rows)} optimizers: {counts['stacked']} element-wise (their runs train stacked "
        f"or share one optimizer call), {counts['alone']} train one model per run, {refused} "
        "refused. optbench run optimizer=NAME [optimizer.KEY=VALUE ...]"
    )
    return "\n".join([*lines, "", summary]) + "\n"
