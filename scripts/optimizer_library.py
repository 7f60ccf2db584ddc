"""Write what optbench knows of every optimizer in pytorch_optimizer's registry, read from
the installed library:

- configs/optimizer/<name>.yaml for each registry name: the config `optimizer=<name>`
  selects (pto_<name> where optbench has a config of that name), with the library's
  defaults as its hyperparameters and `elementwise` from optbench.optimizers.registry.ELEMENTWISE;
- src/optbench/optimizers/pytorch_optimizer.yaml: per registry name, the class (`_target_`), its
  hyperparameters' defaults, the arguments without a default, the arguments whose default
  is not a plain value (a function, a dtype: they keep the library's default), what the
  constructor takes first (params or a model), whether `step` takes a closure or cannot do
  without one, and whether the optimizer has train()/eval() modes (schedule-free).

optbench reads these files instead of importing the library at start-up, which is slow
(docs/speed.md).

    python scripts/optimizer_library.py          # rewrite them (`make library`)
    python scripts/optimizer_library.py --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import enum
import importlib.metadata
import inspect
import sys
import textwrap
from pathlib import Path

import yaml

from optbench.optimizers import registry

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "src" / "optbench" / "optimizers" / "pytorch_optimizer.yaml"
CONFIGS = ROOT / "configs" / "optimizer"


def plain(value) -> bool:
    """Whether a default is a value a config file can hold and give back unchanged."""
    if value is None or isinstance(value, bool | int | float | str):
        return not isinstance(value, enum.Enum)
    if isinstance(value, tuple | list):
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return False


def entry(cls: type) -> dict:
    """What optbench records of one optimizer class."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # less self
    first, rest = parameters[0].name, parameters[1:]
    defaults, required, fixed = {}, [], []
    for parameter in rest:
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
        elif plain(parameter.default):
            default = parameter.default
            defaults[parameter.name] = list(default) if isinstance(default, tuple) else default
        else:
            fixed.append(parameter.name)
    step = inspect.signature(cls.step).parameters
    return {
        "_target_": f"{cls.__module__}.{cls.__qualname__}",
        "summary": " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split()),
        "first_argument": first,
        "hyperparameters": defaults,
        "required": required,
        "library_default_only": fixed,
        "step_takes_closure": "closure" in step,
        # it raises NoClosureError without one: it evaluates the loss itself
        "step_needs_closure": "NoClosureError" in inspect.getsource(cls.step),
        "train_eval_modes": callable(getattr(cls, "eval", None))
        and callable(getattr(cls, "train", None)),
    }


def files() -> dict[Path, str]:
    """Every generated file and its text."""
    import pytorch_optimizer

    version = importlib.metadata.version("pytorch_optimizer")
    optimizers = {
        name: entry(pytorch_optimizer.load_optimizer(name))
        for name in pytorch_optimizer.get_supported_optimizers()
    }
    taken = registry.own_configs()  # what the table written before does not record
    configs = [registry.config_name(name, taken) for name in optimizers]
    table = {"version": version, "configs": configs, "optimizers": optimizers}
    header = f"{registry.GENERATED} from pytorch_optimizer {version}: do not edit.\n"
    result = {TABLE: header + yaml.safe_dump(table, sort_keys=False, width=100)}
    for registry_name, info in optimizers.items():
        config = registry.config(registry_name, info, taken)
        summary = textwrap.fill(info["summary"], 88, initial_indent="# ", subsequent_indent="# ")
        about = f"{summary}\n# pytorch_optimizer's `{registry_name}` at the library's "
        about += "defaults\n# (`optbench optimizers` says how it trains).\n"
        text = header + about + yaml.safe_dump(config, sort_keys=False)
        result[CONFIGS / f"{config['name']}.yaml"] = text
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    options = parser.parse_args()
    wanted = files()
    # files this script wrote before that the installed library no longer has
    stale = [CONFIGS / f"{name}.yaml" for name in registry.generated_configs()]
    stale = [path for path in stale if path not in wanted and path.exists()]
    changed = [
        path for path, text in wanted.items() if not path.exists() or path.read_text() != text
    ]
    if options.check:
        for path in changed + stale:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        if changed or stale:
            print("Run `make library` to regenerate.", file=sys.stderr)
            return 1
        print(f"{len(wanted)} files match the installed pytorch_optimizer.")
        return 0
    for path in stale:
        path.unlink()
    for path in changed:
        path.write_text(wanted[path])
    print(f"wrote {len(changed)} files, removed {len(stale)}, of {len(wanted)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
