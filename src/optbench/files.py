"""Files that are never half-written, and folders that one job holds at a time.

Every file optbench writes goes through atomic_write: to a temporary file in the same
folder, then renamed, so a reader never sees half a file and a full disk leaves the old file
as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import inspect
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from optbench.errors import ConfigError, ResourceError, ResultsError

LOG = "optbench.log"  # written by Hydra while the job runs


def shown(path: Path) -> str:
    """A path as a message written into a results file names it: relative to the current
    directory when it lies inside it (as the user would type it), so that results run from
    a checkout and committed name no path of the machine that made them."""
    path = Path(path).absolute()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd())) or "."
    return str(path)


TEMPORARY = ".optbench-tmp-"  # in the names of atomic_write's temporary files


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY}", dir=path.parent)
    except OSError as error:
        raise _out_of_space(path, error) if _no_space(error) else error from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results are for sharing
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _no_space(error):
            raise _out_of_space(path, error) from None
        raise


def _no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(path: Path, error: OSError) -> ResourceError:
    return ResourceError(
        error.errno,
        f"The disk that holds {path.parent} is out of space ({os.strerror(error.errno)}): "
        f"{path.name} could not be written. Nothing partial was left, and the folder's "
        "earlier files are as they were. Free some space (or write elsewhere with "
        "hydra.run.dir=DIR) and run the same command again: it resumes from the last "
        "checkpoint.",
    )


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files that a killed job left half-written (never results)."""
    for path in Path(folder).glob(f".*{TEMPORARY}*"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(folder: Path):
    """Hold folder for one job: a second job writing into it at the same time would mix
    two jobs' files, so it stops at once with a ResultsError."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultsError(
                f"Another optbench job is writing into {folder} right now; wait for it to "
                "end, or write elsewhere with hydra.run.dir=DIR."
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def move_aside(out_dir: Path) -> Path | None:
    """Move everything in out_dir (but the running job's log and earlier replaced-*/
    folders) into out_dir/replaced-<time>/; nothing is deleted. Returns that folder."""
    out_dir = Path(out_dir)
    entries = [
        p
        for p in (out_dir.iterdir() if out_dir.is_dir() else [])
        if p.name != LOG and not p.name.startswith(("replaced-", "."))
    ]
    if not entries:
        return None
    target = out_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for entry in entries:
        entry.rename(target / entry.name)
    return target


# ---------------------------------------------------------------------------------------
# Output folders, checked before anything trains


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


def source_sha256(target: object) -> str | None:
    """SHA-256 of the Python file that defines a class or function, so that results of an
    edited model, dataset or optimizer are never mixed with the old ones; None for one
    defined in no file (a built-in)."""
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        path = None
    if path is None:
        module = inspect.getmodule(target)
        path = getattr(module, "__file__", None)
    if not path:
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
