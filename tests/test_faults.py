"""Faults and bad input, table-driven: each case sets a fault up for real, runs the console
script, and checks the exit code, one fragment of its one-paragraph message, and the files
afterwards (nothing lost, mixed or left half-written)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from constants import PLOTS, SMOKE

from conftest import OPTBENCH, ROOT, run_cli

pytestmark = pytest.mark.slow


def mount_tmpfs(folder: Path, options: str) -> None:
    """A real small or read-only filesystem; skips the case where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def train_first(*args: str) -> Callable[[Path], None]:
    """A setup step: a real job into out/ before the command under test."""

    def setup(tmp_path: Path) -> None:
        done = run_cli("run", *args, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    return setup


def cut_last_lines(count: int) -> Callable[[Path], None]:
    def setup(tmp_path: Path) -> None:
        train_first("seeds=3", SMOKE)(tmp_path)
        runs = tmp_path / "out" / "runs.csv"
        lines = runs.read_text().splitlines(keepends=True)
        runs.write_text("".join(lines[:-count]))

    return setup


def blank_an_accuracy(tmp_path: Path) -> None:
    """A run not diverged whose accuracy at one evaluation was deleted (an edit by hand)."""
    train_first("seeds=3", SMOKE)(tmp_path)
    path = tmp_path / "out" / "runs.csv"
    runs = pd.read_csv(path)
    runs.loc[2, "test_accuracy"] = float("nan")  # line 4 of the file
    runs.to_csv(path, index=False)
    (tmp_path / "blanked.csv").write_bytes(path.read_bytes())


def still_blanked(tmp_path: Path) -> None:
    assert (tmp_path / "out" / "runs.csv").read_bytes() == (tmp_path / "blanked.csv").read_bytes()


def garbage_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_bytes(os.urandom(5000))


def truncated_checkpoint(tmp_path: Path) -> None:
    """A real torch.save file, cut in half (a copy interrupted, a disk that failed)."""
    import torch

    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "checkpoint.pt"
    torch.save({"job": {}, "weights": torch.zeros(10_000)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncated_mnist(tmp_path: Path) -> None:
    from optbench.data.prepare import default_data_dir

    shutil.copytree(default_data_dir() / "MNIST", tmp_path / "data" / "MNIST")
    labels = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-100])


# pip cannot reach any index: the offline source of MNIST fails too
NO_INDEX = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "2",
}


@dataclass
class Fault:
    args: list[str]
    exit_code: int
    message: str  # in stderr, or in the job's log for a warning
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path], None] | None = None
    env: dict = field(default_factory=dict)
    mount: tuple[str, str] | None = None  # (folder, tmpfs options): a full or read-only disk


def runs_of(tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "out" / "runs.csv")


def two_settings_kept_apart(tmp_path: Path) -> None:
    runs = runs_of(tmp_path)
    assert runs["hyperparameters"].nunique() == 2 and len(runs) == 2 * 2 * 2
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert sorted(summary["optimizer"].unique()) == [
        "adam betas=[0.5, 0.9]",
        "adam betas=[0.9, 0.999]",
    ]
    assert "betas=[0.5, 0.9]" in (tmp_path / "out" / "report.md").read_text()


def file_untouched(tmp_path: Path) -> None:
    lines = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 2 - 4  # as the setup left it


def every_file_and_the_divergence_said(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("runs.csv", "summary.csv", "report.md", "report.html", *PLOTS):
        assert (out / name).is_file(), name  # each plot says that every run diverged
    assert "2 of 2 runs diverged" in (out / "report.md").read_text()
    assert runs_of(tmp_path)["diverged"].all()
    log = (out / "optbench.log").read_text()  # what the terminal showed, too
    assert "mean test accuracy — over 0 runs (2 diverged)" in log and "nan" not in log
    assert next(line for line in log.splitlines() if line.startswith("sgd ")).split() == [
        "sgd",
        "—",
        "—",
        "0",
        "2",
    ]


def nothing_partial(tmp_path: Path) -> None:
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert not (tmp_path / "out" / "runs.csv").exists()


def checkpoint_set_aside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert len(list(out.glob("checkpoint.pt.unreadable-*"))) == 1
    assert len(runs_of(tmp_path)) == 2 * 2


def intact_files_kept(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]


FAULTS = {
    "changed hyperparameters are another run": Fault(
        ["optimizer=adam", "optimizer.betas=[0.5,0.9]", "seeds=2", SMOKE],
        0,
        "",
        setup=train_first("optimizer=adam", "seeds=2", SMOKE),
        check=two_settings_kept_apart,
    ),
    "runs.csv missing whole rows": Fault(
        ["seeds=3", SMOKE],
        2,
        "lacks its evaluations",
        setup=cut_last_lines(4),
        check=file_untouched,
    ),
    "a missing accuracy in a run not diverged": Fault(
        ["seeds=3", SMOKE],
        2,
        "line 4 (optimizer sgd, seed 2, step 10) has no test_accuracy but is not marked diverged",
        setup=blank_an_accuracy,
        check=still_blanked,
    ),
    "every run diverges": Fault(
        ["optimizer.lr=1e8", "seeds=2", SMOKE], 0, "", check=every_file_and_the_divergence_said
    ),
    "a full disk": Fault(
        ["seeds=2", SMOKE],
        74,
        "is out of space",
        mount=("out", "size=200k"),
        check=nothing_partial,
    ),
    "a damaged checkpoint": Fault(
        ["seeds=2", SMOKE],
        0,
        "set aside as checkpoint.pt.unreadable",
        setup=garbage_checkpoint,
        check=checkpoint_set_aside,
    ),
    "a truncated checkpoint": Fault(
        ["seeds=2", SMOKE],
        0,
        "set aside as checkpoint.pt.unreadable",
        setup=truncated_checkpoint,
        check=checkpoint_set_aside,
    ),
    "an empty read-only data folder": Fault(
        ["data_dir=data", SMOKE],
        2,
        "data cannot be used (",
        mount=("data", "ro,size=1m"),
        check=lambda tmp_path: not (tmp_path / "out").exists(),
    ),
    "a failed re-prepare": Fault(
        ["data_dir=data", SMOKE],
        2,
        "t10k-labels-idx1-ubyte fails its MD5 check",
        setup=truncated_mnist,
        check=intact_files_kept,
        env=NO_INDEX,
    ),
}


@pytest.mark.parametrize("case", list(FAULTS), ids=list(FAULTS))
def test_a_fault_gets_its_exit_code_and_message_and_loses_nothing(
    case, tmp_path, data_dir, monkeypatch
):
    fault = FAULTS[case]
    if fault.setup:
        fault.setup(tmp_path)
    if fault.mount:
        mount_tmpfs(tmp_path / fault.mount[0], fault.mount[1])
    try:
        for name, value in fault.env.items():
            monkeypatch.setenv(name, value)
        done = run_cli("run", *fault.args, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
        log = tmp_path / "out" / "optbench.log"
        said = done.stderr + (log.read_text() if log.is_file() else "")
        assert done.returncode == fault.exit_code, said
        assert fault.message in said
        assert "Traceback" not in done.stderr
        if fault.exit_code != 0:  # one paragraph
            assert done.stderr.strip().count("\n") == 0, done.stderr
        if fault.check:
            fault.check(tmp_path)
    finally:
        if fault.mount:
            unmount(tmp_path / fault.mount[0])


def test_sigterm_stops_like_ctrl_c_and_the_same_command_resumes(tmp_path, data_dir):
    """What SLURM sends at a time limit. The job is long (20,000 steps); it is stopped as
    soon as its first checkpoint exists, so it is mid-run by construction."""
    args = [
        OPTBENCH,
        "run",
        "seeds=2",
        "train.steps=20000",
        "train.eval_every=100",
        "dataset.train_size=1000",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    job = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert checkpoint.is_file()
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143
    assert "stopped by SIGTERM; run the same command again to resume" in stderr
    assert "Stopped by SIGTERM" in (tmp_path / "out" / "optbench.log").read_text()
    assert checkpoint.is_file()


def test_version():
    done = subprocess.run([OPTBENCH, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("optbench 0.1.0 (torch ")
    hydra_flag = subprocess.run([OPTBENCH, "run", "--version"], capture_output=True, text=True)
    assert hydra_flag.stdout == done.stdout


def test_a_multirun_whose_job_diverges_everywhere_still_combines(tmp_path, data_dir):
    done = run_cli(
        "run",
        "-m",
        "optimizer.lr=0.1,1e8",
        "seeds=2",
        SMOKE,
        f"hydra.sweep.dir={tmp_path / 'm'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "m" / "report.md").read_text()
    assert "2 of 4 runs diverged" in report and "sgd lr=1e+08 seed 0 from step 10" in report
    summary = pd.read_csv(tmp_path / "m" / "summary.csv").set_index("optimizer")
    assert summary.loc["sgd lr=0.1", "n"].max() == 2
    assert summary.loc["sgd lr=1e+08", "n"].max() == 0


def test_plot_into_a_folder_it_cannot_write_names_the_out_option(tmp_path):
    from optbench.results import store

    runs = store.read_runs(ROOT / "results" / "wizard_ffnn")
    for seed in (0, 1):
        store.write_results(tmp_path / str(seed), runs[runs.seed == seed])
    done = run_cli(
        "plot", str(tmp_path / "0"), str(tmp_path / "1"), "--out", "/proc/x", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "Cannot write results to /proc/x" in done.stderr and "--out DIR" in done.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")
def test_a_60_column_terminal_still_shows_the_accuracy(tmp_path, data_dir):
    """The finished progress bar stays on the screen, and the final table follows it: read
    them there, 60 columns wide."""
    # the width from the terminal itself: a tmux server already running may pass COLUMNS on
    command = f"env -u COLUMNS {OPTBENCH} run seeds=2 {SMOKE} hydra.run.dir={tmp_path / 'out'}"
    session = f"optbench-{os.getpid()}"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-x",
            "60",
            "-y",
            "40",
            "-s",
            session,
            f"{command}; tmux wait-for -S {session}; sleep 60",
        ],
        check=True,
    )
    try:
        subprocess.run(["tmux", "wait-for", session], timeout=300, check=True)
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    bar = next(line for line in screen.splitlines() if "runs, accuracy" in line)
    assert "2 runs, accuracy 0." in bar and "0 diverged" in bar and len(bar.rstrip()) <= 60
    lines = screen.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("optimizer")) :]
    assert table[0].split()[:2] == ["optimizer", "accuracy"] and len(table[0]) <= 60
    row = table[1].split()
    assert row[0] == "sgd" and row[2] == "±" and 0 < float(row[1]) < 1
    assert "Results in" in "".join(screen.rstrip().splitlines()[-2:])  # the last, wrapped
