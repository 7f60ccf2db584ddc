"""Checkpoints: a job's whole training state at an evaluation point, written atomically and
read back with torch's safe loader (weights_only), so that an interrupted job resumes where
it stopped."""

from __future__ import annotations

import collections
import io
import logging
import pickle
import time
from pathlib import Path

import torch

from optbench import files
from optbench.optimizers import registry

log = logging.getLogger("optbench")

# The layout of the trainers' states in a checkpoint; a checkpoint of another layout (an
# earlier optbench) is not resumed.
FORMAT = 5


def save(path: Path, state: dict) -> None:
    """Write the training state atomically; serialised in memory first, so that a full disk
    is an OSError that says so (torch.save's own stream error does not)."""
    data = to_bytes(state)
    files.atomic_write(path, lambda tmp: tmp.write_bytes(data))


def to_bytes(state: dict) -> bytes:
    """The training state as a checkpoint file holds it (a worker process sends its part's
    state so: a copy, however the training goes on)."""
    buffer = io.BytesIO()
    torch.save(_without_deques(state), buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict:
    """The state to_bytes serialised, read back with torch's safe loader."""
    return _safe_load(io.BytesIO(data))


def _safe_load(source, **options) -> dict:
    """torch.load with weights_only (no code runs), every tensor on the CPU; an optimizer
    state may hold a few known classes (registry.checkpoint_classes)."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, **options)
    except pickle.UnpicklingError:
        if hasattr(source, "seek"):
            source.seek(0)
        with torch.serialization.safe_globals(registry.checkpoint_classes()):
            state = torch.load(source, map_location="cpu", weights_only=True, **options)
    return _with_deques(state)


def load(path: Path) -> dict | None:
    """The training state saved at path, every tensor on the CPU (the parts of a job in
    worker processes read back too); None when there is none.
    The trainers move what they load to their device (torch.optim keeps a step counter on
    the CPU unless fused or capturable; a data order's generator state must stay a CPU
    ByteTensor), so a checkpoint written on a GPU loads on any machine. A checkpoint that
    cannot be read (damaged, truncated, not optbench's) is set aside beside it, never
    loaded unsafely, and training starts from the beginning."""
    if not path.is_file():
        return None
    try:
        state = _safe_load(path)
        if not isinstance(state, dict) or "job" not in state:
            raise ValueError("not an optbench checkpoint")
        if "parts" in state:  # worker processes' parts, each serialised by its worker
            state["parts"] = [from_bytes(part) for part in state["parts"]]
        return state
    except Exception as error:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        log.warning(
            "%s cannot be read (%s); it is set aside as %s, and training starts from the "
            "beginning.",
            path.name,
            type(error).__name__,
            aside.name,
        )
        return None


def belongs(state: dict, identity: dict, path: Path | None) -> bool:
    """Whether a loaded state was saved by the job of this identity (its runs, laid out
    alike); where the checkpoint's path is given, the log says whether it is resumed."""
    mine = state["job"] == identity
    if path is not None and mine:
        log.info("Resuming from %s at step %d", path.name, state["step"])
    elif path is not None:
        log.info(
            "%s belongs to another job (or an earlier optbench); training from the start",
            path.name,
        )
    return mine


def is_spent(path: Path, fingerprint: str, complete: frozenset) -> bool:
    """Whether the checkpoint at path belongs to a job of this protocol whose runs are all
    complete (in runs.csv): nothing would ever resume from it. One that cannot be read, or
    holds a run still unfinished, is not spent (a later job may resume it)."""
    if not path.is_file():
        return False
    try:  # mmap: only the job's identity is read, not the tensors
        job = _safe_load(path, mmap=True)["job"]
        runs = {tuple(key) for key in job["runs"]}
    except Exception:  # damaged, or not optbench's: the job that resumes it sets it aside
        return False
    return job.get("fingerprint") == fingerprint and runs <= complete


def _without_deques(value):
    """The state with every collections.deque (AdaShift's past gradients) as a dict that
    torch's safe loader can read back; _with_deques rebuilds them. Containers without a
    deque come back as they are."""
    if isinstance(value, collections.deque):
        return {DEQUE: [_without_deques(v) for v in value], "maxlen": value.maxlen}
    return _map_children(value, _without_deques)


def _with_deques(value):
    if isinstance(value, dict) and DEQUE in value:
        return collections.deque(map(_with_deques, value[DEQUE]), maxlen=value["maxlen"])
    return _map_children(value, _with_deques)


def _map_children(value, function):
    """value with function applied to each item of a dict, list or tuple; value itself
    when that changes none (a model's state_dict keeps its type and metadata)."""
    if isinstance(value, dict):
        mapped = {k: function(v) for k, v in value.items()}
        changed = any(mapped[k] is not v for k, v in value.items())
    elif isinstance(value, list | tuple):
        mapped = [function(v) for v in value]
        changed = any(m is not v for m, v in zip(mapped, value, strict=True))
        mapped = type(value)(mapped)
    else:
        return value
    return mapped if changed else value


DEQUE = "optbench.deque"  # the key that marks a saved deque
