"""The typed top-level config, and what makes two runs the same run and two configs the
same protocol.

Hydra composes `configs/config.yaml` on top of the `Config` schema registered here, so a
misspelt key (`train.epoch=3`) or a wrong type (`train.epochs=abc`) fails at composition.
The checks of the values a schema cannot express (seeds=0, lr<0, ...) live in
compose/checks.py (`check_config`); it calls a few value checks defined here, beside the
schema they complete: seed_list (plan.py's too), check_train, check_target (suite.py's
too) and positive_int. Also here: a run's identity (run_key), the protocol as config
and its fingerprint, and the source revision config.yaml records.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import importlib.resources
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from optbench.errors import ConfigError


def is_number(value) -> bool:
    """An int or a float, and not a boolean: true would pass for 1, false for 0."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def yaml_error_message(error: Exception) -> str:
    """A YAML syntax error in a config file, as one paragraph: the file, the line and
    column, what YAML expected, and the way out."""
    # where the construct that YAML could not finish starts, else where it noticed
    mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a file"
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    what = " ".join(": ".join(str(part) for part in parts if part).split())
    what = what or " ".join(str(error).split())
    return (
        f"The config file {where} is not valid YAML ({what}). Fix the file, or move it out "
        "of the configs folder."
    )


class Device(enum.Enum):
    auto = "auto"  # CUDA when present, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class WorkerKind(enum.Enum):
    processes = "processes"  # one process a worker (the runs dealt to them): the default
    threads = "threads"  # worker threads in one process


class StackRuns(enum.Enum):
    auto = "auto"  # stack element-wise optimizers' runs where it pays (training.loop.should_stack)
    always = "always"  # stack every element-wise optimizer's runs
    never = "never"  # train every run on its own


@dataclass
class TrainConfig:
    batch_size: Any = 64  # examples per optimizer step; "full" for full-batch gradient descent
    epochs: int = 1  # passes over the training set (ignored when steps is set)
    steps: int | None = None  # total optimizer steps; wins over epochs when set
    eval_every: int | None = None  # steps between evaluations; null: once per epoch
    test_batch_size: int = 1000  # examples per forward pass at evaluation (memory only)


@dataclass
class TuningConfig:
    trials: int = 16  # random-search trials per optimizer (`optbench tune`)
    seed: int = 0  # of the random search: the same seed draws the same trials


@dataclass
class TargetConfig:
    """A workload's target (the suite's time-to-target): written into its preset by
    `optbench targets`, with how and when it was derived."""

    test_accuracy: float | None = None  # in (0, 1]; null: none derived yet
    derived: Any = None  # the rule, the reference runs' values, the date and the revision


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING  # the learning-rate schedule (training/lr_schedules.py)
    logger: Any = MISSING  # where else results go (loggers.py)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment_name: str = MISSING
    optimizers: list[str] = field(default_factory=list)  # what `optbench sweep` trains
    seeds: Any = 1  # N: seeds 0..N-1; a list: exactly those seeds
    device: Device = Device.auto
    data_dir: str | None = None  # null: $OPTBENCH_DATA_DIR, else data/ of the checkout
    threads: int | None = None  # CPU workers that train runs side by side; null: the cores
    # What the CPU workers are: processes (the runs dealt to them) or threads of one process.
    workers: WorkerKind = WorkerKind.processes
    # TensorFloat-32 matmuls and convolutions on NVIDIA GPUs: faster, but with a 10-bit
    # mantissa; off, so that every device computes in float32.
    allow_tf32: bool = False
    # Train the runs of element-wise optimizers as one batched model (stack.StackTrainer).
    stack_runs: StackRuns = StackRuns.auto
    # Skip the runs already complete in the output folder and continue from its checkpoint;
    # false: move what the folder holds aside (into replaced-<time>/) and train everything.
    resume: bool = True
    # Learning-rate sensitivity: train every optimizer at each multiple of its configured lr,
    # e.g. [0.01, 0.1, 1, 10, 100] (log-spaced); null: the configured lr only.
    lr_grid: list[float] | None = None
    tuning: TuningConfig = field(default_factory=TuningConfig)
    # An experiment preset's values for a choice of a group, e.g. {optimizer: {sgd: {lr: 0.1}}};
    # already merged into dataset, model and optimizer (see register_preset_values).
    for_choice: Any = field(default_factory=dict)
    # A workload's target test accuracy (optbench suite); a record, not part of the protocol.
    target: TargetConfig = field(default_factory=TargetConfig)


CONFIG_PACKAGE = "optbench.configs"
CONFIG_NAME = "config"
PRESET_GROUPS = ("dataset", "model", "optimizer")  # the groups a preset's for_choice may set
REGISTERED_PRESETS: set[str] = set()  # the presets whose for_choice sections Hydra merges


def register_preset_values() -> None:
    """Make every experiment preset's `for_choice` section a set of optional config groups,
    for_choice_<group>/<experiment>/<choice>, which config.yaml's defaults list merges right
    after the chosen group's own file. So a preset is one file, its values apply to the
    choices it names only, and command-line overrides still win, as Hydra composes them."""
    store = ConfigStore.instance()
    store.store(name="optbench_schema", node=Config)
    REGISTERED_PRESETS.clear()
    for preset in (importlib.resources.files(CONFIG_PACKAGE) / "experiment").iterdir():
        if not preset.name.endswith(".yaml"):
            continue
        values = OmegaConf.create(preset.read_text()).get("for_choice") or {}
        REGISTERED_PRESETS.add(preset.name.removesuffix(".yaml"))
        for group, choices in values.items():
            for choice, node in choices.items():
                experiment = preset.name.removesuffix(".yaml")
                store.store(
                    group=f"for_choice_{group}/{experiment}", name=choice, node=node, package=group
                )


register_preset_values()


MAX_SEED = 2**32 - 1  # seeds are stored as 64-bit integers in runs.csv; this leaves room


def seed_list(seeds: Any) -> list[int]:
    """`seeds=5` means seeds 0..4; `seeds=[3,7,11]` means exactly those."""
    if isinstance(seeds, bool):
        raise ConfigError(_seed_message(seeds))
    if isinstance(seeds, int):
        if not 1 <= seeds <= MAX_SEED + 1:
            raise ConfigError(_seed_message(seeds))
        return list(range(seeds))
    if isinstance(seeds, (list, tuple, ListConfig)):
        values = list(seeds)
        if (
            not values
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                for s in values
            )
            or len(set(values)) != len(values)
        ):
            raise ConfigError(_seed_message(values))
        return values
    raise ConfigError(_seed_message(seeds))


def _seed_message(seeds: Any) -> str:
    return (
        f"Invalid seeds={seeds!r}: give a positive count (seeds=5 runs seeds 0..4) "
        f"or a non-empty list of distinct integers from 0 to {MAX_SEED} (seeds=[3,7,11])."
    )


def positive_int(name: str, value: Any, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Invalid {name}={value!r}: it must be a positive integer{extra}.")


def check_train(train: DictConfig) -> None:
    batch = train.batch_size
    if batch != "full":
        positive_int("train.batch_size", batch, ', or "full" for full-batch gradient descent')
    positive_int("train.epochs", train.epochs)
    positive_int("train.test_batch_size", train.test_batch_size)
    if train.steps is not None:
        positive_int("train.steps", train.steps, " (or null to train for train.epochs)")
    if train.eval_every is not None:
        positive_int("train.eval_every", train.eval_every, " (or null: once per epoch)")


def check_target(value, workload: str) -> None:
    """A target is a test accuracy in (0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(
            f"Invalid target.test_accuracy={value!r} for workload {workload!r}: a target is a "
            "test accuracy in (0, 1], e.g. 0.97; derive it with `optbench targets`."
        )


# ---------------------------------------------------------------------------------------
# What is "the same run": the same protocol (fingerprint), the same optimizer with the same
# hyperparameters (name and hyperparameters), the same seed. Defined here, used everywhere.

RUN_IDENTITY = ["fingerprint", "optimizer", "hyperparameters", "seed"]


def hyperparameters(optimizer: DictConfig | dict) -> str:
    """Everything of an optimizer config that decides its numbers, as canonical JSON: every
    key but `name` (the class, each hyperparameter, `elementwise`), sorted. runs.csv
    carries it in every row, so that two settings of one optimizer are two runs."""
    container = (
        optimizer
        if isinstance(optimizer, dict)
        else OmegaConf.to_container(optimizer, resolve=True)
    )
    kept = {key: value for key, value in container.items() if key != "name"}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def run_key(optimizer: str, hyperparameters_json: str, seed) -> tuple[str, str, int]:
    """A run within one protocol: its optimizer's name and hyperparameters, its seed."""
    return (str(optimizer), str(hyperparameters_json), int(seed))


# What is "the same protocol": the resolved config without the keys below. Defined here,
# used everywhere (the fingerprint, the results folder's name, the labels of a multirun).
#
# Which runs a job trains: runs.csv tells them apart by optimizer, hyperparameters and seed.
WHICH_RUNS = ("seeds", "optimizer", "optimizers", "lr_grid")
# Where and how the runs train: not what they compute (threads, device and stack_runs
# change the rounding of sums at most).
WHERE_AND_HOW = ("data_dir", "threads", "workers", "device", "stack_runs", "resume", "logger")
# TensorFloat-32 on a GPU changes rounding as well; it keeps its own results folder.
ROUNDING = ("allow_tf32",)
# Records kept beside the protocol: the preset's values (merged into the protocol's
# dataset, model and optimizer), and what config.yaml adds.
RECORDS = ("for_choice", "optimizer_configs", "provenance", "target")
NOT_PROTOCOL = WHICH_RUNS + WHERE_AND_HOW + ROUNDING + RECORDS
# Not in a results folder's name (Hydra's override_dirname): the experiment names the
# folder above it, more seeds add runs to a folder, where and how is not what is computed.
FOLDER_NAME_EXCLUDES = ("experiment", "seeds") + WHERE_AND_HOW
OmegaConf.register_new_resolver(
    "optbench_folder_name_excludes", lambda: list(FOLDER_NAME_EXCLUDES), replace=True
)


def changes_protocol(override: str) -> bool:
    """Whether a command-line override changes the protocol: not a NOT_PROTOCOL key, not
    Hydra's own, not an optimizer's hyperparameter (runs.csv carries those)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key not in NOT_PROTOCOL and not key.startswith(("hydra.", "optimizer.", "tuning."))


def protocol_config(cfg: DictConfig | dict) -> dict:
    """The protocol as config: the resolved config without the keys that do not change a
    run (NOT_PROTOCOL), what the fingerprint hashes. A constant schedule is no schedule:
    left out, so that a protocol keeps the fingerprint it had before optbench had schedules;
    so is the whole test set (dataset.test_size null), and no validation set
    (dataset.validation_size null or 0) or the whole of one evaluated
    (dataset.validation_eval_size null)."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    container = OmegaConf.to_container(OmegaConf.create(container), enum_to_str=True)
    kept = {key: value for key, value in container.items() if key not in NOT_PROTOCOL}
    if kept.get("schedule", {}).get("name") == "constant":
        del kept["schedule"]
    if "dataset" in kept and kept["dataset"].get("test_size", 0) is None:  # the whole test set
        kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k != "test_size"}
    if "dataset" in kept and not kept["dataset"].get("validation_size", 0):  # no validation set
        unused = ("validation_size", "validation_eval_size")  # nothing held out, nothing cut
        kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k not in unused}
    if "dataset" in kept and kept["dataset"].get("validation_eval_size", 0) is None:  # all of it
        kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k != "validation_eval_size"}
    if "tuning" in kept:
        # how many trials tune the optimizers changes which settings train, not what a run of
        # a setting computes; hashed as its defaults, so that every fingerprint made before
        # stays as it was and a tuned workload keeps its target's protocol
        kept["tuning"] = dataclasses.asdict(TuningConfig())
    return kept


def fingerprint(cfg: DictConfig | dict) -> str:
    """Hash of the protocol: the resolved config without seeds, optimizer and paths."""
    text = OmegaConf.to_yaml(OmegaConf.create(protocol_config(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def workload_fingerprint(cfg: DictConfig | dict) -> str:
    """The fingerprint of the protocol under a constant schedule: what a suite's workload
    trains whatever schedule its tuned track adds (schedule=warmup_cosine), so that its
    target, set under the workload's own schedule, still belongs to it."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    return fingerprint({key: value for key, value in container.items() if key != "schedule"})


def protocol_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two protocols, as "key (a -> b)"."""
    differences = []
    for key in sorted(set(a) | set(b), key=str):
        left, right = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(left, dict) and isinstance(right, dict):
            differences += protocol_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            differences.append(f"{prefix}{key} ({left} -> {right})")
    return differences


def source_checkout() -> Path | None:
    """The repository root when optbench runs from its source tree (editable install)."""
    package_dir = Path(__file__).resolve().parents[1]  # src/optbench, above config/
    root = package_dir.parent.parent
    if package_dir.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def git_revision() -> str | None:
    """The checkout's commit (with '-dirty' for uncommitted changes), or None when optbench
    does not run from a source checkout (a wheel install has no revision to report)."""
    checkout = source_checkout()
    if checkout is None:
        return None
    here = checkout
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if revision.returncode != 0:
            return None
        dirty = subprocess.run(
            # changes to code, not to the results that runs are writing right now
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return revision.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def import_target(target: str, owner: str, key: str, wants: str):
    """The class or function a dotted `_target_` path names, imported; ConfigError, naming
    the owner ("Model 'x'"), the key and what it should name, when it cannot be."""
    module, _, attribute = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"{owner}: cannot import {key}={target!r} ({type(error).__name__}: "
            f"{' '.join(str(error).split())}); give the full import path of {wants}"
        ) from None
