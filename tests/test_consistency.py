"""A results folder never contradicts itself: a real `optbench` process stopped (kill -9,
SIGTERM, Ctrl-C) right after each write of its job's end, then the same command again,
leaves every derived file written from the runs.csv the folder holds, the checkpoint
removed. The stops come from the writes themselves: a sitecustomize module on the child's
PYTHONPATH wraps os.replace (the last step of files.atomic_write) and sends the signal to
its own process once the chosen file has been replaced. Training killed midway is
tests/test_resume.py's subject."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from constants import PLOTS, SMOKE
from omegaconf import OmegaConf

from optbench import files
from optbench.results import checksums, store
from optbench.results.provenance import CONFIG_YAML

from conftest import OPTBENCH, default_ctrl_c, run_cli

pytestmark = pytest.mark.slow  # real jobs in subprocesses, stopped and run again

JOB = ("run", "optimizer=adam", "seeds=2", SMOKE, "threads=1")

# Every file the job above writes at its end, in order (the module's first test checks the
# list against the writes a real job makes). checksums.sha256 is the last: after it only the
# spent checkpoint is removed.
END_WRITES = [
    "runs.csv",
    "summary.csv",
    "config.yaml",
    "costs.csv",
    "test_accuracy.png",
    "test_loss.png",
    "train_loss.png",
    "last_batch_loss.png",
    "final_test_accuracy.png",
    "costs.png",
    "report.md",
    "report.html",
    "checksums.sha256",
]
DERIVED = ["summary.csv", CONFIG_YAML, "costs.csv", *PLOTS, "costs.png", "report.md", "report.html"]

SITECUSTOMIZE = """\
import os
import signal

_replace = os.replace
_stop_at = os.environ.get("STOP_AFTER_REPLACING")
_record = os.environ.get("RECORD_REPLACES_IN")


def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    name = os.path.basename(os.fspath(dst))
    if _record:
        with open(_record, "a") as file:
            file.write(name + "\\n")
    if name == _stop_at:
        os.kill(os.getpid(), int(os.environ["STOP_SIGNAL"]))


os.replace = replace
"""


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def child(folder: Path, hooks: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The console script, with the test's sitecustomize on its PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [OPTBENCH, *args, f"hydra.run.dir={folder}"],
        cwd=folder.parent,
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        preexec_fn=default_ctrl_c,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, hooks, data_dir) -> tuple[Path, list[str]]:
    """A folder the job wrote without a stop, and the names of the files it replaced."""
    folder = tmp_path_factory.mktemp("finished") / "out"
    record = folder.parent / "replaced.txt"
    done = child(folder, hooks, *JOB, RECORD_REPLACES_IN=str(record))
    assert done.returncode == 0, done.stderr
    return folder, record.read_text().splitlines()


def assert_self_consistent(folder: Path, seeds: list[int]) -> None:
    """Every derived file there, written from the folder's runs.csv; no checkpoint left."""
    assert [name for name in DERIVED if not (folder / name).is_file()] == []
    runs = store.read_runs(folder)
    assert sorted(runs["seed"].unique()) == seeds
    fresh = store.summarize(runs).to_csv(index=False)
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / store.SUMMARY_CSV), pd.read_csv(io.StringIO(fresh))
    )
    config = OmegaConf.load(folder / CONFIG_YAML)
    assert list(range(config.seeds)) == seeds
    assert [config.provenance.protocol_fingerprint] == list(runs["fingerprint"].unique())
    # sha256sum, not optbench, checks that every recorded file is as the job's end left it
    checked = subprocess.run(
        ["sha256sum", "--check", "--strict", checksums.CHECKSUMS],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = [line.split(": ")[0] for line in checked.stdout.splitlines() if line.endswith(": OK")]
    assert sorted(listed) == sorted({"runs.csv", *DERIVED} - {"costs.csv"})
    assert not (folder / store.CHECKPOINT).exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files"


def comparable(folder: Path) -> pd.DataFrame:
    """runs.csv without wall_s, the one column that differs between two runs of a job."""
    return pd.read_csv(folder / store.RUNS_CSV).drop(columns="wall_s")


def test_the_writes_of_a_jobs_end_are_those_the_stops_cover(finished):
    folder, replaced = finished
    last_checkpoint = max(i for i, name in enumerate(replaced) if name == store.CHECKPOINT)
    assert replaced[last_checkpoint + 1 :] == END_WRITES
    assert_self_consistent(folder, [0, 1])


STOPS = [(name, signal.SIGKILL) for name in END_WRITES]
STOPS += [(name, signal.SIGTERM) for name in ("runs.csv", "checksums.sha256")]
STOPS += [(name, signal.SIGINT) for name in ("config.yaml", "report.html")]
EXIT = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 143, signal.SIGINT: 130}
STOPPED_TEST = "test_a_job_stopped_after_any_write_of_its_end_is_completed_by_the_same_command"


@pytest.fixture(scope="module")
def stopped(request, tmp_path_factory, hooks, data_dir) -> dict:
    """Every job of STOPS that the session runs a test of, each in its own folder, stopped
    after its write: (written, signal) -> (folder, the stopped process). The jobs run side
    by side, one per core, as most of each is the console script's start-up."""
    root = tmp_path_factory.mktemp("stopped")
    selected = [
        (item.callspec.params["written"], item.callspec.params["sig"])
        for item in request.session.items
        if getattr(item, "originalname", "") == STOPPED_TEST
    ]

    def stop(written: str, sig: int) -> tuple[Path, subprocess.CompletedProcess]:
        folder = root / f"{written}-{signal.Signals(sig).name}" / "out"
        folder.parent.mkdir()
        env = {"STOP_AFTER_REPLACING": written, "STOP_SIGNAL": str(int(sig))}
        return folder, child(folder, hooks, *JOB, **env)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {case: pool.submit(stop, *case) for case in selected}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize(
    ("written", "sig"), STOPS, ids=[f"{n}-{signal.Signals(s).name}" for n, s in STOPS]
)
def test_a_job_stopped_after_any_write_of_its_end_is_completed_by_the_same_command(
    written, sig, stopped, finished, tmp_path
):
    folder, process = stopped[(written, sig)]
    assert process.returncode == EXIT[sig], process.stderr
    if sig != signal.SIGKILL:
        assert "run the same command again" in process.stderr
    assert (folder / written).is_file()
    again = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to train" in (folder / files.LOG).read_text()
    assert_self_consistent(folder, [0, 1])
    pd.testing.assert_frame_equal(comparable(folder), comparable(finished[0]), check_exact=True)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(folder, copy)
    return copy


def test_more_seeds_stopped_after_runs_csv_leave_no_folder_of_two_minds(finished, hooks, tmp_path):
    """seeds=3 into the folder of seeds=2, stopped once runs.csv holds the third seed: the
    same command again writes the summary, config.yaml and report for three seeds."""
    folder = copy_of(finished[0], tmp_path)
    job = [a if a != "seeds=2" else "seeds=3" for a in JOB]
    stopped = child(folder, hooks, *job, STOP_AFTER_REPLACING="runs.csv", STOP_SIGNAL="15")
    assert stopped.returncode == 143, stopped.stderr
    assert OmegaConf.load(folder / CONFIG_YAML).seeds == 2  # the state the stop left
    again = run_cli(*job, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_self_consistent(folder, [0, 1, 2])
    assert "(0, 1, 2)" in (folder / "report.md").read_text()


@pytest.mark.parametrize("deleted", ["summary.csv", CONFIG_YAML, "report.md", "test_loss.png"])
def test_a_derived_file_deleted_by_hand_is_written_again(deleted, finished, tmp_path):
    folder = copy_of(finished[0], tmp_path)
    (folder / deleted).unlink()
    again = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_self_consistent(folder, [0, 1])
    written_again = OmegaConf.load(folder / CONFIG_YAML).provenance.get("written_without_training")
    assert written_again is (True if deleted == CONFIG_YAML else None)


def test_a_config_yaml_edited_by_hand_is_refused_and_left_as_it_is(finished, tmp_path):
    folder = copy_of(finished[0], tmp_path)
    config = folder / CONFIG_YAML
    edited = config.read_text().replace("  steps: 20\n", "  steps: 40\n")
    assert edited != config.read_text()
    config.write_text(edited)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != files.LOG}
    refused = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"{config} was changed after the job that wrote it ended" in message
    assert "git checkout" in message and "resume=false" in message
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != files.LOG}
    assert after == before
    config.unlink()  # the way out the message names
    again = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_self_consistent(folder, [0, 1])


def test_a_folder_written_before_checksums_keeps_its_config_and_gains_them(finished, tmp_path):
    """A folder from an optbench without checksums (every committed one under results/):
    summary.csv matches runs.csv and no checkpoint is left, so its config.yaml, and the
    provenance in it, is kept; the same command adds the checksums."""
    folder = copy_of(finished[0], tmp_path)
    (folder / checksums.CHECKSUMS).unlink()
    config = (folder / CONFIG_YAML).read_bytes()
    again = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (folder / CONFIG_YAML).read_bytes() == config
    assert_self_consistent(folder, [0, 1])


def test_a_folder_without_checksums_stopped_at_its_end_is_completed(finished, tmp_path):
    """An earlier optbench stopped between runs.csv and summary.csv: the summary of fewer
    runs tells, and the same command writes it and config.yaml afresh."""
    folder = copy_of(finished[0], tmp_path)
    (folder / checksums.CHECKSUMS).unlink()
    runs = store.read_runs(folder)
    store.write_summary(folder, runs[runs["seed"] == 0])  # the summary of the earlier job
    again = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert OmegaConf.load(folder / CONFIG_YAML).provenance.written_without_training
    assert_self_consistent(folder, [0, 1])
