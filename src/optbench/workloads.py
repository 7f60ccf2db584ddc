"""`optbench suite` and `optbench targets`: every workload × optimizer × seed.

A workload is an experiment preset with a `target` section (configs/experiment/mnist_ffnn.yaml
and the others of WORKLOADS, and every such preset in a user's config folders on
hydra.searchpath: docs/custom_workloads.md). A suite is a Hydra multirun of one sweep job per
workload, `experiment=mnist_ffnn,fashion_ffnn,...`, into one folder with a subfolder per
workload: so it resumes like any sweep, and Hydra's launchers run its jobs in parallel or on
a cluster (hydra/launcher=joblib, submitit_slurm). When the jobs are done, the suite's own files are
written from the workloads' runs.csv (suite_report.py).

`optbench targets` runs the reference optimizers on the workloads the same way and writes
each workload's target into its preset (targets.derive, targets.write_into_preset): a
user's workload's into the user's own preset file.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from optbench.analysis import targets
from optbench.analysis.targets import PROFILE_MEASURES
from optbench.config.schema import (
    CONFIG_PACKAGE,
    WHERE_AND_HOW,
    changes_protocol,
    check_target,
    workload_fingerprint,
)
from optbench.data import prepare
from optbench.errors import ConfigError
from optbench.files import shown, write_csv
from optbench.optimizers.catalog import searchpath_folders
from optbench.plan import Plan
from optbench.report import suite_report
from optbench.report.suite_report import WORKLOADS_CSV, Workload

WORKLOADS = ("mnist_ffnn", "fashion_ffnn", "mnist_lenet", "fashion_lenet", "cifar10_lenet")
# AlgoPerf's target-setting optimizers, as far as optbench has them.
REFERENCE = ["adamw", "nadam", "nesterov", "momentum"]
DEFAULT_SEEDS = {"suite": "3", "targets": "[100,101,102,103,104]"}
# The reference optimizers are tuned before they set a target, each with the same number of
# random-search trials (optbench tune's search space) chosen on the validation set, and the
# target runs use seeds the suite's runs (0, 1, 2, ...) do not: a suite's run is never
# measured against a target it helped set.
TARGET_TRIALS = 8
# A suite's two tracks answer two questions on the same workloads, as AlgoPerf's
# self-tuning and external-tuning rulesets keep them apart: `defaults`, every optimizer as
# its library ships it (no tuning, the workload's own constant schedule), and `tuned`, every
# optimizer given the same tuning budget (TUNED_TRIALS random-search trials per workload,
# chosen on the validation set, analysis/tuning.py's search space) under a warmup-cosine
# schedule. track=both trains each into its own subfolder (FOLDER/defaults, FOLDER/tuned)
# and then compares them (report/tracks.py). The overrides a track adds; a user's own
# tuning.* or schedule overrides win over them, and go to the tuned track only.
TUNED_TRIALS = 8
TRACKS = {"defaults": [], "tuned": [f"tuning.trials={TUNED_TRIALS}", "schedule=warmup_cosine"]}
TRACK_CHOICES = (*TRACKS, "both")
# Suite arguments that are not Hydra overrides of its jobs.
OWN_KEYS = ("workloads", "time", "track")


@dataclass
class Request:
    """What a `suite` or `targets` command line asks for."""

    command: str  # suite or targets
    workloads: list[str]
    measure: str  # what the performance profiles measure time in (targets.MEASURES)
    folder: Path
    overrides: list[str]  # the jobs' own overrides (less the workload)
    left_out: list[str] = field(default_factory=list)  # one line per workload left out
    track: str | None = None  # TRACK_CHOICES; None: the overrides as given, no track

    @property
    def config_folders(self) -> list[Path]:
        """The user's config folders (hydra.searchpath), where workloads of their own are."""
        return searchpath_folders(self.overrides)

    @property
    def hydra_args(self) -> list[str]:
        """The multirun that trains it: one sweep job per workload."""
        return [
            "-m",
            f"experiment={','.join(self.workloads)}",
            *self.overrides,
            f"hydra.sweep.dir='{self.folder}'",  # quoted: a folder name may hold = [ ,
            "hydra.sweep.subdir=${hydra:runtime.choices.experiment}",
            "~hydra.callbacks.combine_multirun",  # workloads are not pooled: the suite's own files
        ]


def preset(name: str, folders: list[Path] = ()):
    """A workload's preset file as written (its defaults list, target, ...)."""
    return OmegaConf.create(preset_path(name, folders).read_text())


def preset_path(name: str, folders: list[Path] = ()) -> Path:
    """optbench's preset of that name, else the user's (FOLDER/experiment/NAME.yaml), as
    Hydra's search path finds them: optbench's configs first."""
    ours = Path(str(importlib.resources.files(CONFIG_PACKAGE) / "experiment" / f"{name}.yaml"))
    theirs = [Path(f) / "experiment" / f"{name}.yaml" for f in folders]
    return next((path for path in [ours, *theirs] if path.is_file()), ours)


def users_workloads(folders: list[Path]) -> list[str]:
    """The presets with a `target` section in the user's config folders, by name."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).glob("experiment/*.yaml")):
            try:
                has_target = "target" in OmegaConf.load(path)
            except Exception:  # not a preset this can read: Hydra names the problem if used
                has_target = False
            if has_target and path.stem not in WORKLOADS and path.stem not in found:
                found.append(path.stem)
    return found


def dataset_of(name: str, folders: list[Path] = ()) -> str:
    for entry in preset(name, folders).defaults:
        if "override /dataset" in entry:
            return entry["override /dataset"]
    raise ConfigError(f"Workload {name!r} names no dataset in its preset's defaults list.")


def parse(command: str, args: list[str]) -> Request:
    """The request of a command line: its own keys (workloads=, time=) taken out, the
    default seeds (and for targets the reference optimizers) put in, the folder chosen."""
    mine = [a for a in args if a.split("=", 1)[0] in OWN_KEYS]
    if any("=" not in a for a in mine):
        raise ConfigError(f"{mine[0]}: give a value, e.g. workloads=[mnist_ffnn] or time=steps.")
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in mine}
    rest = [a for a in args if a not in mine]
    for arg in rest:
        key = arg.split("=", 1)[0].lstrip("+~")
        if arg.startswith("-") and arg not in ("-m", "--multirun"):
            raise ConfigError(
                f"{arg}: `optbench {command}` takes overrides only (see `optbench --help` and "
                "docs/suite.md); `optbench sweep experiment=mnist_ffnn " + arg + "` shows a "
                "workload's config."
            )
        if arg in ("-m", "--multirun") or key == "experiment" or key.startswith("hydra.sweep.sub"):
            raise ConfigError(
                f"{arg}: a {command} is itself one job per workload, each its experiment "
                "preset; choose them with workloads=[mnist_ffnn,fashion_lenet,...]."
            )
    measure = own.get("time", "steps")
    if measure not in PROFILE_MEASURES:
        raise ConfigError(
            f"Invalid time={measure!r}: the performance profiles measure time in one of "
            f"{', '.join(PROFILE_MEASURES)}."
        )
    track = _track(command, own.get("track"), rest)
    if track == "tuned":
        rest += _tuned_extras(rest)
    if not any(a.startswith("seeds=") for a in rest):
        rest.append(f"seeds={DEFAULT_SEEDS[command]}")
    if command == "targets" and not any(a.startswith("optimizers=") for a in rest):
        rest.append(f"optimizers=[{','.join(REFERENCE)}]")
    if command == "targets" and not any(a.startswith("tuning.trials=") for a in rest):
        rest.append(f"tuning.trials={TARGET_TRIALS}")
    folder, rest = _folder(command, rest)
    request = Request(command, [], measure, folder, rest, track=track)
    _choose_workloads(request, own.get("workloads"))
    return request


def _is_tuning(override: str) -> bool:
    """Whether an override is the tuned track's: tuning.* or the schedule."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.startswith("tuning.") or key == "schedule" or key.startswith("schedule.")


def _tuned_extras(overrides: list[str]) -> list[str]:
    """The tuned track's overrides (TRACKS) that the user's own do not already set."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in TRACKS["tuned"] if o.split("=", 1)[0] not in given]


def _track(command: str, track: str | None, overrides: list[str]) -> str | None:
    """The track asked for, checked: a suite's only, one of TRACK_CHOICES, and the defaults
    track never tuned."""
    if track is None:
        return None
    if command != "suite":
        raise ConfigError(
            f"track={track}: tracks are a suite's (optbench suite track=both); `optbench "
            f"{command}` tunes the reference optimizers with tuning.trials=N."
        )
    if track not in TRACK_CHOICES:
        raise ConfigError(
            f"Invalid track={track!r}: one of {', '.join(TRACK_CHOICES)} (defaults: every "
            "optimizer as its library ships it; tuned: each tuned with the same budget; both: "
            "the two, side by side; docs/suite.md)."
        )
    tuning = [o for o in overrides if _is_tuning(o)]
    if track == "defaults" and tuning:
        raise ConfigError(
            f"track=defaults trains every optimizer as its library ships it, so {tuning[0]} "
            "has no place in it; give it with track=tuned (or track=both, where it applies to "
            "the tuned track)."
        )
    return track


def both_tracks(request: Request) -> list[Request]:
    """The two suites of track=both: the defaults track (without the user's tuning.* and
    schedule overrides) in FOLDER/defaults and the tuned track in FOLDER/tuned, each with
    the workloads request chose."""
    defaults = [o for o in request.overrides if not _is_tuning(o)]
    tuned = request.overrides + _tuned_extras(request.overrides)
    return [
        Request(
            request.command,
            list(request.workloads),
            request.measure,
            request.folder / track,
            overrides,
            list(request.left_out),
            track,
        )
        for track, overrides in (("defaults", defaults), ("tuned", tuned))
    ]


def _folder(command: str, args: list[str]) -> tuple[Path, list[str]]:
    """hydra.sweep.dir= (or hydra.run.dir=) when given, else outputs/<command>/<overrides>,
    named by the overrides that change what is computed, so that the same command finds its
    results again; and the arguments without it."""
    given = [
        a.split("=", 1)[1] for a in args if a.startswith(("hydra.sweep.dir=", "hydra.run.dir="))
    ]
    rest = [a for a in args if not a.startswith(("hydra.sweep.dir=", "hydra.run.dir="))]
    if given:
        return Path(given[-1]), rest
    named = sorted(
        a
        for a in rest
        if a.split("=", 1)[0].lstrip("+~") not in ("seeds", *WHERE_AND_HOW)
        and not a.lstrip("+~").startswith("target.")
        and not a.lstrip("+~").startswith("hydra")
    )
    return Path("outputs") / command / (",".join(named).replace("/", "_") or "default"), rest


def _choose_workloads(request: Request, given: str | None) -> None:
    """The workloads to run. Named ones must exist, have their data within reach and (for a
    suite) a target; the default, every workload, leaves out those that do not, with one
    line each saying why and what to do."""
    valid = [*WORKLOADS, *users_workloads(request.config_folders)]
    names = valid if given is None else [n.strip() for n in given.strip("[]").split(",")]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"workloads={given} names the workload {', '.join(repeated)} more than once; "
            "name each workload once (for more runs of it, give more seeds: seeds=N)."
        )
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ConfigError(
            f"Unknown workload {', '.join(unknown) or '(none given)'} in workloads={given}; "
            f"valid workloads: {', '.join(valid)} (a workload of your own is a preset with a "
            "`target` section in your config folder on hydra.searchpath: "
            "docs/custom_workloads.md)."
        )
    data_dir = prepare.resolve_data_dir(
        next((a.split("=", 1)[1] for a in request.overrides if a.startswith("data_dir=")), None)
    )
    override = next(
        (a.split("=", 1)[1] for a in request.overrides if a.startswith("target.test_accuracy=")),
        None,
    )
    for name in names:
        reason = _why_not(name, request, data_dir, override)
        if reason and given is None:
            request.left_out.append(f"{name}: left out: {reason}")
        elif reason:
            raise ConfigError(f"Workload {name!r} cannot run: {reason}")
        else:
            request.workloads.append(name)
    if not request.workloads:
        raise ConfigError("No workload can run: " + " ".join(request.left_out))


def _data_problem(dataset: str, data_dir: Path) -> str:
    """Why a built-in dataset cannot be used now, or "" once it is prepared."""
    if dataset not in prepare.IDX_MD5 and not (data_dir / "cifar-10-batches-py").is_dir():
        return (  # no offline source: a download attempt would only wait for the network
            f"{dataset} is not on disk under {shown(data_dir)} and has no offline source; on a "
            f"machine with a network, `optbench data prepare {dataset}` downloads it (its "
            "message names the archive to copy in by hand otherwise)."
        )
    try:
        prepare.prepare(dataset, data_dir)
    except ConfigError as error:
        return str(error)
    return ""


def _why_not(name: str, request: Request, data_dir: Path, target_override: str | None) -> str:
    """Why a workload cannot run now (one paragraph), or "" when it can: its data is not
    on disk and cannot be fetched, or (for a suite) it has no target. A dataset of the
    user's own is read, and checked, when the workload's job is composed."""
    command, folders = request.command, request.config_folders
    dataset = dataset_of(name, folders)
    problem = _data_problem(dataset, data_dir) if dataset in prepare.DATASETS else ""
    if problem:
        return problem
    target = preset(name, folders).target.test_accuracy
    if command == "suite" and target is None and target_override is None:
        return (
            "it has no target yet; derive one with `optbench targets "
            f"workloads=[{name}]`, or give target.test_accuracy=VALUE."
        )
    check_target(target, name)
    return ""


def record_workloads(request: Request, plans: dict) -> tuple[list[Workload], pd.DataFrame]:
    """The workloads to train, from the jobs' checked plans, and workloads.csv, which records
    each one's dataset, model, target (with how it was derived, and whether that was on the
    protocol it trains now), chance accuracy, length, seeds and optimizers, then the
    workloads left out, with why. Returns the workloads and the table written."""
    by_name: dict[str, Plan] = {plan.experiment: plan for plan in plans.values()}
    if sorted(by_name) != sorted(request.workloads) or len(plans) != len(request.workloads):
        raise ConfigError(
            f"A {request.command} runs one job per workload; a sweep over several values "
            "(key=a,b) would put several into one workload's folder. Run one "
            f"{request.command} per value, each with its own hydra.sweep.dir=DIR."
        )
    given = any(o.startswith("target.test_accuracy=") for o in request.overrides)
    ran = [_workload(by_name[name], given) for name in request.workloads]
    left = [
        {"workload": line.split(":")[0], "status": line.split(": ", 1)[1]}
        for line in request.left_out
    ]
    table = pd.DataFrame([workload.row() for workload in ran] + left)
    write_csv(table, request.folder / WORKLOADS_CSV)
    return ran, table


def _workload(plan: Plan, target_given: bool) -> Workload:
    target, name = plan.config["target"], plan.experiment
    chance = 1 / plan.dataset["num_classes"]
    check_target(target["test_accuracy"], name)
    if target["test_accuracy"] is not None and target["test_accuracy"] <= chance:
        raise ConfigError(
            f"target.test_accuracy={target['test_accuracy']} for {name!r} is no better than "
            f"guessing ({chance:.2g}); give a target above it."
        )
    if len(plan.optimizers) < 2:
        raise ConfigError(
            f"A suite compares optimizers; optimizers={[o.name for o in plan.optimizers]} "
            "lists one. Give two or more, e.g. optimizers=[adamw,lion]."
        )
    derived = target["derived"] or {}
    return Workload(
        workload=name,
        dataset=plan.dataset["name"],
        model=plan.model["name"],
        target=target["test_accuracy"],
        chance=chance,
        steps=plan.steps.total_steps,
        seeds=tuple(plan.seeds),
        optimizers=tuple(spec.name for spec in plan.optimizers),
        derived="given on the command line" if target_given else json.dumps(derived),
        target_on_this_protocol=not target_given
        and derived.get("fingerprint") in (plan.fingerprint, workload_fingerprint(plan.config)),
    )


def finish(request: Request, ran: list[Workload], table: pd.DataFrame) -> list[str]:
    """After the jobs: a suite's own files (suite_report.py), or for `targets` each
    workload's target written into its preset, from the workloads that ran (and
    workloads.csv's table, for the suite's report). Returns what to tell the user."""
    from optbench import __version__
    from optbench.config.schema import git_revision

    if request.command == "suite":
        t = suite_report.analyse(request.folder, ran, table)
        written = suite_report.write(request.folder, t, request.measure)
        told = [
            f"{w}: no run of any optimizer reached the target; every file is written"
            for w in suite_report.unreached(t["per_optimizer"])
        ]
        return told + [f"suite results in {written[-1]}"]
    changed = [o for o in request.overrides if changes_protocol(o) and not o.startswith("tuning.")]
    told, rows = [], []
    revision = f"optbench {__version__} (git {git_revision() or 'unknown'})"
    for workload in ran:
        runs = suite_report.workload_runs(request.folder, workload)
        value, medians = targets.derive(runs)
        rows.append({"workload": workload.workload, "target": value, **medians})
        if changed:
            continue
        seeds = sorted(runs["seed"].unique())
        where = request.folder / workload.workload
        fingerprint, on = runs["fingerprint"].iloc[0], targets.chosen_on(runs)
        derived = targets.derivation(medians, seeds, where, revision, fingerprint, on)
        path = preset_path(workload.workload, request.config_folders)
        targets.write_into_preset(path, value, derived)
        told.append(f"{workload.workload}: target {value:.4f} written into its preset")
    write_csv(pd.DataFrame(rows), request.folder / "targets.csv")
    if changed:
        told.append(
            f"targets in {request.folder / 'targets.csv'}; not written into the presets, as "
            f"{' '.join(changed)} changes the workloads' protocol (a target belongs to the "
            "protocol its preset defines)"
        )
    return told
