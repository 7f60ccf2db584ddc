"""The shape of the code: optbench's folders are layers, and a layer imports only the
layers below it, so each can be read (and tested) knowing only what is beneath it; the
composed config stops at the compose layer; the command starts without importing torch.
docs/architecture.md draws the layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "optbench"

# The layers, lowest first: a unit (a subpackage, or a module at the top of the package)
# imports units of its own layer's lower entries or of lower layers only. Within a layer
# the units are independent of one another.
LAYERS = [
    ["errors"],
    ["files", "labels"],
    ["config"],
    ["data", "models", "optimizers"],
    ["plan"],
    ["training"],
    ["analysis"],
    ["results"],
    ["report"],
    ["compose"],
    ["benchmark"],
    ["workloads"],  # optbench suite and targets (optbench.suite is the API's function)
    ["commands", "helptext"],
    ["cli"],
    ["api", "textbook"],
    ["__init__"],  # optbench.run, load, ...: api's functions, imported on first use
]
ALLOWED = {"configs", "__version__"}  # the packaged YAML files; the version string


def unit_of(module: str) -> str:
    """optbench.training.loop -> training; optbench.cli -> cli; optbench -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """The optbench units a module imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optbench"):
            if node.module == "optbench":  # from optbench import files, labels
                found |= {alias.name for alias in node.names}
            else:  # from optbench.results.store import read_runs
                found.add(unit_of(node.module))
        elif isinstance(node, ast.Import):
            found |= {unit_of(a.name) for a in node.names if a.name.startswith("optbench")}
    return found - ALLOWED


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each unit of the package and the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        if relative.parts[0] == "configs":
            continue
        unit = (
            relative.parts[0].removesuffix(".py")
            if len(relative.parts) > 1 or relative.stem != "__init__"
            else "__init__"
        )
        graph.setdefault(unit, set()).update(imports_of(path) - {unit})
    return graph


def layering_errors(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """Every import of a unit from its own layer or a layer above, and every unit that is
    in no layer."""
    level = {unit: k for k, layer in enumerate(layers) for unit in layer}
    errors = [f"{unit} is in no layer" for unit in graph if unit not in level]
    for unit, imported in sorted(graph.items()):
        for other in sorted(imported):
            if unit in level and level.get(other, len(layers)) >= level[unit]:
                errors.append(f"{unit} (layer {level[unit]}) imports {other}")
    return errors


def test_every_layer_imports_only_the_layers_below_it():
    graph = import_graph(PACKAGE)
    assert {"training", "analysis", "results", "report", "config", "compose"} <= set(graph)
    assert layering_errors(graph, LAYERS) == []


def test_the_layer_check_fails_on_a_cycle_and_on_an_upward_import(tmp_path):
    """The check above can fail: a package whose low layer imports a higher one (here a
    cycle: each of two units imports the other, one of them inside a function) is refused,
    and so is a unit in no layer."""
    (tmp_path / "low").mkdir()
    (tmp_path / "low" / "__init__.py").write_text('"""low"""\n')
    (tmp_path / "low" / "a.py").write_text("def f():\n    from optbench.high import b\n")
    (tmp_path / "high.py").write_text("from optbench.low import a\n")
    (tmp_path / "stray.py").write_text("x = 1\n")
    graph = import_graph(tmp_path)
    assert graph["low"] == {"high"} and graph["high"] == {"low"}
    assert layering_errors(graph, [["low"], ["high"]]) == [
        "stray is in no layer",
        "low (layer 0) imports high",
    ]
    assert layering_errors({"low": set(), "high": {"low"}}, [["low"], ["high"]]) == []


# Below the compose layer code works on Plans, specs, dicts and DataFrames: these layers
# never name a DictConfig nor a composed `cfg`. (data, models and optimizers take any
# mapping: compose's checks hand them the composed config before the plan is made.)
PLAIN_DATA = ["training", "analysis", "results", "report", "benchmark", "labels", "files"]


def names_in(path: Path) -> set[str]:
    """Every name and attribute a module uses."""
    tree = ast.parse(path.read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }


@pytest.mark.parametrize("unit", PLAIN_DATA)
def test_the_config_object_stops_at_the_compose_layer(unit):
    paths = (
        [PACKAGE / f"{unit}.py"]
        if (PACKAGE / f"{unit}.py").exists()
        else (PACKAGE / unit).rglob("*.py")
    )
    for path in paths:
        assert not {"DictConfig", "cfg"} & names_in(path), path.relative_to(PACKAGE)


def test_the_config_check_finds_a_config(tmp_path):
    (tmp_path / "m.py").write_text("def f(cfg):\n    return cfg.optimizer\n")
    assert "cfg" in names_in(tmp_path / "m.py")


def test_the_command_starts_without_importing_torch():
    """torch takes seconds to import: --help, --version, plot and compare do without it."""
    modules = "optbench, optbench.cli, optbench.results.store, optbench.compose.jobs"
    probe = f"import sys, {modules}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
