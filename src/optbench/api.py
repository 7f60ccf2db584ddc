"""optbench from Python: the training commands as functions that return DataFrames.

    import optbench
    results = optbench.sweep(optimizers=["sgd", "adam"], seeds=2, debug="smoke")
    results.summary          # summary.csv; results.runs, results.ranking, results.folder

Each function is its command: `optbench.run(optimizer="adam", seeds=5)` is
`optbench run optimizer=adam seeds=5`. The settings become the command line's overrides
(`command_line` says how) and go through the command's own code, cli.train: the same
checks before anything trains, the same folder, files, log and resumption. Bad input raises
ConfigError, a failing resource ResourceError, each with the paragraph the command prints;
Ctrl-C raises KeyboardInterrupt, and the same call again resumes. docs/python.md is the
guide and reference.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from optbench import cli
from optbench.errors import ConfigError
from optbench.report.ranking import RANKING_CSV
from optbench.report.suite_report import WORKLOADS_CSV
from optbench.results import store

Overrides = Sequence[str] | Mapping[str, object] | None

AVERAGE_RANKS_CSV = "average_ranks.csv"  # a suite's ranking over its workloads


@dataclass
class Results:
    """A results folder and its tables, read as the commands read them.

    runs     runs.csv: one row per run and evaluation step (a suite: every workload's)
    summary  summary.csv: per optimizer setting and step, over the seeds
    ranking  ranking.csv (a suite: average_ranks.csv), or None where the folder has none
             (one optimizer setting, a tuning job)
    folder   the folder, as given or as the command named it
    """

    folder: Path
    runs: pd.DataFrame = field(repr=False)
    summary: pd.DataFrame = field(repr=False)
    ranking: pd.DataFrame | None = field(repr=False, default=None)

    def __repr__(self) -> str:
        optimizers = ", ".join(map(str, self.runs["optimizer"].unique()))
        return f"Results({str(self.folder)!r}: {len(self.runs)} rows of runs, {optimizers})"


def run(overrides: Overrides = None, *, out=None, progress: bool = True, **settings) -> Results:
    """`optbench run`: one optimizer over seeds, e.g. run(optimizer="adam", seeds=5)."""
    return _train("run", overrides, out, progress, settings)


def sweep(overrides: Overrides = None, *, out=None, progress: bool = True, **settings) -> Results:
    """`optbench sweep`: every optimizer of the experiment (or of optimizers=[...]) in one
    job, e.g. sweep(experiment="wizard_ffnn", optimizers=["sgd", "adam"], seeds=2)."""
    return _train("sweep", overrides, out, progress, settings)


def tune(overrides: Overrides = None, *, out=None, progress: bool = True, **settings) -> Results:
    """`optbench tune`: the same random-search budget for every optimizer, e.g.
    tune(optimizers=["sgd", "adam"], **{"tuning.trials": 8})."""
    return _train("tune", overrides, out, progress, settings)


def suite(overrides: Overrides = None, *, out=None, progress: bool = True, **settings) -> Results:
    """`optbench suite`: every workload x optimizer x seed, then the suite's files, e.g.
    suite(workloads=["mnist_ffnn"], optimizers=["sgd", "adam"], seeds=2, debug="smoke")."""
    return _train("suite", overrides, out, progress, settings)


def load(folder) -> Results:
    """The Results of any results folder: a job's (run, sweep, tune, a multirun's combined
    folder, compare --out) or a suite's. runs.csv is read and checked as the commands read
    it (a damaged one raises ResultsError, a ConfigError); summary.csv is read, or computed
    from the runs where it is missing."""
    folder = Path(folder)
    if all((folder / track / WORKLOADS_CSV).is_file() for track in ("defaults", "tuned")):
        raise ConfigError(
            f"{folder} holds the two tracks of a suite (track=both): load one of them, "
            f"optbench.load('{folder / 'defaults'}') or optbench.load('{folder / 'tuned'}'); "
            "tracks.csv in it compares the two."
        )
    try:
        if not (folder / store.RUNS_CSV).is_file() and (folder / WORKLOADS_CSV).is_file():
            return _load_suite(folder)
        runs = store.read_runs(folder)
    except FileNotFoundError as error:  # as `optbench plot` and `compare` say it
        raise ConfigError(str(error)) from None
    return Results(folder, runs, _summary(folder, runs), _read_if_there(folder / RANKING_CSV))


def command_line(
    command: str, overrides: Overrides = None, out=None, settings: Mapping | None = None
) -> list[str]:
    """The arguments of `optbench COMMAND` that a call means: each setting key=value in the
    order given, then the overrides (strings as written, a mapping's items as settings),
    then the folder (`out`) as hydra.run.dir (a suite's as hydra.sweep.dir). A value is
    written as Hydra reads it: True/False true/false, None null, a list or tuple [a,b], a
    mapping {k:v}, anything else as str() gives it (so a string may use Hydra's syntax)."""
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides={overrides!r}: give a list of key=value strings, e.g. "
            "overrides=['optimizer.lr=0.01'], or a dict, e.g. overrides={'optimizer.lr': 0.01}."
        )
    given = overrides.items() if isinstance(overrides, Mapping) else None
    args = [arg for key, value in (settings or {}).items() for arg in _setting(key, value)]
    if given is not None:
        args += [f"{key}={_hydra_value(value)}" for key, value in given]
    else:
        args += [str(o) for o in overrides or []]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ConfigError(
            f"{flags[0]}: optbench.{command}() takes overrides only (key=value); Hydra's flags "
            "(-m, --cfg, --help) belong to the command line, `optbench "
            f"{command} {flags[0]}`."
        )
    if out is not None:
        out = Path(out).expanduser()  # no shell expands ~ in a Python call
        key = "hydra.sweep.dir" if command == "suite" else "hydra.run.dir"
        named = [a for a in args if a.split("=", 1)[0].lstrip("+~") in ("hydra.run.dir", key)]
        if named:
            raise ConfigError(
                f"out={str(out)!r} and {named[0]} both name the folder; give it once, as out=."
            )
        # workloads.parse reads its folder's value as written and quotes it for Hydra itself
        args.append(f"{key}={out}" if command == "suite" else f"{key}={_quoted(str(out))}")
    return args


def _train(command: str, overrides: Overrides, out, progress: bool, settings: dict) -> Results:
    args = command_line(command, overrides, out, settings)
    with _logging_as_it_was():
        folders = cli.train(command, args, progress=progress)
    return load(Path(folders[0]).absolute())


@contextlib.contextmanager
def _logging_as_it_was():
    """Hydra sets up the root logger for the job (its console and optbench.log); afterwards
    the caller's logging is as it was, and the job's log file closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


# The groups whose entry a Python class or function may be given for directly: it becomes
# GROUP=custom with GROUP._target_ its import path (docs/custom_workloads.md).
BY_TARGET = ("model", "dataset", "optimizer")


def _setting(key: str, value) -> list[str]:
    """The overrides of one keyword argument: key=value, or for a class or function given
    as a model, dataset or optimizer (or as any `_target_`), its import path."""
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        if key in BY_TARGET and not isinstance(value, str):
            raise ConfigError(
                f"{key}={value!r}: give the name of a {key} config (a string), or a class or "
                f"function optbench can import by its path, e.g. {key}=MyClass; an object "
                "cannot be recorded for a job to resume from."
            )
        return [f"{key}={_hydra_value(value)}"]
    path = import_path(value, key)
    if key in BY_TARGET:
        return [f"{key}=custom", f"{key}._target_={path}"]
    return [f"{key}={path}"]


def import_path(value, key: str) -> str:
    """The dotted path that imports `value` (module.QualifiedName); ConfigError when no
    other process could import it by that path: a class or function defined in a notebook
    or a script run as __main__, or inside a function. A job records what it trains by
    path (config.yaml, the fingerprint), and resuming it imports it again."""
    module, name = value.__module__, value.__qualname__
    found = None
    if module != "__main__" and "<locals>" not in name:
        with contextlib.suppress(Exception):
            found = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
    if found is not value:
        where = "in __main__ (a notebook or a script)" if module == "__main__" else f"in {module}"
        raise ConfigError(
            f"{key}={name}: optbench records what it trains by its import path, so that a "
            f"job can resume and a rerun find it, and {name} defined {where} cannot be "
            "imported by one. Put it in a module on PYTHONPATH (e.g. my_models.py) and pass "
            f"it from there, or give its path: {key}._target_='my_models.{name.split('.')[-1]}'."
        )
    return f"{module}.{name}"


def _hydra_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def _quoted(path: str) -> str:
    """A folder as a Hydra value: as it is where Hydra reads it so, else quoted (a name may
    hold = , [ or a space)."""
    if re.fullmatch(r"[A-Za-z0-9_./-]+", path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _summary(folder: Path, runs: pd.DataFrame) -> pd.DataFrame:
    path = folder / store.SUMMARY_CSV
    return pd.read_csv(path) if path.is_file() else store.summarize(runs)


def _read_if_there(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def _load_suite(folder: Path) -> Results:
    """A suite's folder: every workload that ran (workloads.csv), its runs and summary one
    after the other; the suite's average ranks as the ranking."""
    workloads = pd.read_csv(folder / WORKLOADS_CSV)
    ran = [str(name) for name in workloads.loc[workloads["status"] == "ran", "workload"]]
    runs = [store.read_runs(folder / name) for name in ran]
    summaries = [_summary(folder / name, r) for name, r in zip(ran, runs, strict=True)]
    return Results(
        folder,
        pd.concat(runs, ignore_index=True),
        pd.concat(summaries, ignore_index=True),
        _read_if_there(folder / AVERAGE_RANKS_CSV),
    )
