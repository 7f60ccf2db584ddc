"""checksums.sha256: the SHA-256 of a results folder's runs.csv and of every file a job
derived from it (summary.csv, config.yaml, the ranking, plots and report), written last at
the end of a job.

It says which runs.csv the other files were written from. A job stopped between its last
writes (Ctrl-C, SIGTERM, kill -9) leaves the checksums of an earlier runs.csv, or none, and
the same command again writes every derived file afresh; file times could not tell, as they
do not survive a copy or a git clone. It also tells a config.yaml edited by hand from the
one the job wrote. The format is sha256sum's: `sha256sum -c checksums.sha256` checks a
folder without optbench.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from optbench.errors import ResultsError
from optbench.files import atomic_write
from optbench.results.provenance import CONFIG_YAML
from optbench.results.store import CHECKPOINT, RUNS_CSV, SUMMARY_CSV, read_runs, summarize

CHECKSUMS = "checksums.sha256"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(folder: Path) -> dict[str, str] | None:
    """File name -> SHA-256 as checksums.sha256 records them; None without one (a folder
    written before optbench kept checksums, or whose first job never ended)."""
    path = Path(folder) / CHECKSUMS
    if not path.is_file():
        return None
    recorded = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            recorded[name] = digest
    return recorded


def write(folder: Path, derived: Iterable[Path]) -> None:
    """Record runs.csv and the derived files (those of them in folder) as they are now."""
    folder = Path(folder)
    names = sorted({Path(p).name for p in derived} - {RUNS_CSV, CHECKSUMS})
    names = [RUNS_CSV] + [name for name in names if (folder / name).is_file()]
    text = "".join(f"{sha256(folder / name)}  {name}\n" for name in names)
    atomic_write(folder / CHECKSUMS, lambda tmp: tmp.write_text(text))


def update(folder: Path, rewritten: Iterable[Path]) -> None:
    """After `optbench plot` or `compare` rewrote some derived files of a complete folder:
    their new checksums. A folder whose checksums are missing or out of date is left so
    (its next job writes every derived file)."""
    folder = Path(folder)
    recorded = read(folder)
    if recorded is None or recorded.get(RUNS_CSV) != sha256(folder / RUNS_CSV):
        return
    write(folder, [folder / name for name in recorded] + list(rewritten))


def config_is_current(folder: Path) -> bool:
    """Whether folder's config.yaml was written for the runs.csv the folder holds, so that a
    job which trains nothing keeps it. False where either file is missing or the job that
    wrote runs.csv was stopped before its end. A config.yaml changed since its job wrote it
    is refused: rewriting it would hide the change, keeping it would falsify what produced
    the runs."""
    folder = Path(folder)
    config, runs = folder / CONFIG_YAML, folder / RUNS_CSV
    if not (config.is_file() and runs.is_file()):
        return False
    recorded = read(folder)
    if recorded is None:
        return _consistent_without_checksums(folder)
    if recorded.get(RUNS_CSV) != sha256(runs) or CONFIG_YAML not in recorded:
        return False
    if recorded[CONFIG_YAML] != sha256(config):
        raise ResultsError(
            f"{config} was changed after the job that wrote it ended (its SHA-256 is not the "
            f"one {folder / CHECKSUMS} records), so it no longer says what produced the runs "
            f"in {runs}, and optbench will not overwrite the change. Put the file back "
            "as it was (from a copy, or with `git checkout`), or delete it to have the same "
            "command write it afresh from its own settings, or train afresh with resume=false "
            "(which moves the folder's results aside into replaced-<time>/)."
        )
    return True


def _consistent_without_checksums(folder: Path) -> bool:
    """A folder written before optbench kept checksums: its config.yaml is taken as written
    for its runs.csv when no checkpoint is left (a job that trained removed it only after
    writing config.yaml) and summary.csv equals a fresh summary of runs.csv (what every such
    folder whose job ended held)."""
    if (folder / CHECKPOINT).exists() or not (folder / SUMMARY_CSV).is_file():
        return False
    try:
        written = pd.read_csv(folder / SUMMARY_CSV)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False  # damaged: written again like any stale summary
    fresh = pd.read_csv(io.StringIO(summarize(read_runs(folder)).to_csv(index=False)))
    if list(written.columns) != list(fresh.columns) or len(written) != len(fresh):
        return False
    try:
        pd.testing.assert_frame_equal(
            written, fresh, check_dtype=False, check_exact=False, rtol=1e-12
        )
    except AssertionError:
        return False
    return True
