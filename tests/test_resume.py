"""Sweeps that survive interruption and never mix results: real `optbench` processes killed
with SIGKILL or SIGINT and resumed, folders of other protocols refused, damaged files left
untouched, Hydra's launchers writing into one sweep folder."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from constants import SMOKE
from omegaconf import OmegaConf

import optbench
from optbench import files
from optbench.results import store
from optbench.results.provenance import CONFIG_YAML

from conftest import OPTBENCH, default_ctrl_c, run_cli

pytestmark = pytest.mark.slow  # real jobs in subprocesses, killed and resumed

# 3 optimizers x 2 seeds, 300 steps, a checkpoint every 20 steps: a few seconds of training
JOB = (
    "sweep",
    "optimizers=[sgd,adam,rmsprop]",
    "seeds=2",
    "dataset.train_size=2000",
    "train.steps=300",
    "train.eval_every=20",
    "threads=1",
)
# The same job for optbench.sweep
SETTINGS = {
    "optimizers": ["sgd", "adam", "rmsprop"],
    "seeds": 2,
    "dataset.train_size": 2000,
    "train.steps": 300,
    "train.eval_every": 20,
    "threads": 1,
}


def comparable(folder: Path) -> pd.DataFrame:
    """runs.csv without wall_s, the one column that differs between two runs of a job."""
    return pd.read_csv(folder / store.RUNS_CSV).drop(columns="wall_s")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    return optbench.sweep(**SETTINGS, out=folder, progress=False).folder


def start_and_stop(
    folder: Path, sig: int, rng: random.Random, job: tuple = JOB, to_a_worker: bool = False
) -> subprocess.CompletedProcess:
    """Start the job and send it `sig` at a random moment after its second checkpoint: a
    random fraction of the time between its first two checkpoints later. That interval is
    the machine's own, so the signal lands before the fourth of the job's 15 checkpoints on
    a fast machine as on a slow one: never after the job has ended. The job's worker
    processes at that moment are in the result's `workers`; with to_a_worker, the signal
    goes to the first of them instead of the job."""
    process = subprocess.Popen(
        [OPTBENCH, *job, f"hydra.run.dir={folder}"],
        cwd=folder.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_ctrl_c,
    )
    checkpoint, seen, deadline = folder / store.CHECKPOINT, [], time.monotonic() + 300
    while len(seen) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint came"
        written = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if written is not None and written not in [w for w, _ in seen]:
            seen.append((written, time.monotonic()))
        time.sleep(0.005)
    time.sleep(rng.uniform(0, seen[1][1] - seen[0][1]))
    workers = children(process.pid)
    os.kill(workers[0] if to_a_worker else process.pid, sig)
    stdout, stderr = process.communicate(timeout=120)
    stopped = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    stopped.workers = workers
    return stopped


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc), in order of their ids."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def gone(pids: list[int], within: float = 10.0) -> bool:
    """Whether every one of these processes has ended (its /proc entry gone, or a zombie)
    within that many seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_a_sweep_killed_at_a_random_moment_resumes_to_the_same_results(uninterrupted, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    folder = tmp_path / "killed"
    stopped = start_and_stop(folder, signal.SIGKILL, rng)
    assert stopped.returncode == -signal.SIGKILL, f"random seed {seed}"
    assert not (folder / store.RUNS_CSV).exists(), "the job ended before the kill"
    resumed = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in (folder / files.LOG).read_text()
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)
    assert not (folder / store.CHECKPOINT).exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files"


def test_ctrl_c_keeps_the_progress_and_says_how_to_resume(uninterrupted, tmp_path):
    folder = tmp_path / "interrupted"
    stopped = start_and_stop(folder, signal.SIGINT, random.Random())
    assert stopped.returncode == 130, stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    assert (folder / store.CHECKPOINT).is_file()
    resumed = run_cli(*JOB, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)


# The same job in two worker processes (threads=2: the runs dealt to two processes)
IN_PROCESSES = (*JOB[:-1], "threads=2")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_job_in_worker_processes_stopped_takes_its_workers_and_resumes_to_the_same_results(
    uninterrupted, tmp_path, sig
):
    """SIGKILL of the job (its workers die with it, by the kernel), Ctrl-C and SIGTERM (the
    job stops its workers and says how to resume); resumed, the rows are those of the job
    trained uninterrupted in one process."""
    seed = random.randrange(10**6)
    folder = tmp_path / "stopped"
    stopped = start_and_stop(folder, sig, random.Random(seed), job=IN_PROCESSES)
    assert len(stopped.workers) == 2, f"random seed {seed}"
    assert gone(stopped.workers), "a worker trains on after its job stopped"
    if sig == signal.SIGKILL:
        assert stopped.returncode == -signal.SIGKILL
    else:  # 130 and 143: the shell's codes of a job stopped by SIGINT and SIGTERM
        assert stopped.returncode == 128 + sig, stopped.stderr
        assert "run the same command again to resume" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    assert (folder / store.CHECKPOINT).is_file() and not (folder / store.RUNS_CSV).exists()
    resumed = run_cli(*IN_PROCESSES, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in (folder / files.LOG).read_text()
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)
    assert not (folder / store.CHECKPOINT).exists()


def test_a_worker_process_that_dies_stops_the_job_with_a_message_and_it_resumes(
    uninterrupted, tmp_path
):
    """A worker killed (as the kernel's out-of-memory killer would): the job stops the other
    one, says which ended and how, with exit code 74 and no traceback, and keeps its last
    checkpoint; the same command resumes to the uninterrupted rows."""
    folder = tmp_path / "worker-killed"
    stopped = start_and_stop(
        folder, signal.SIGKILL, random.Random(), job=IN_PROCESSES, to_a_worker=True
    )
    assert stopped.returncode == 74, stopped.stderr
    assert "worker process (optbench-worker-1-of-2) ended without finishing" in stopped.stderr
    assert "exit code -9" in stopped.stderr and "Traceback" not in stopped.stderr
    assert gone(stopped.workers)
    assert (folder / store.CHECKPOINT).is_file()
    resumed = run_cli(*IN_PROCESSES, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)


@pytest.mark.parametrize(
    ("first", "then", "resumed_from"),
    [(("threads=1",), ("threads=2",), True), (("threads=2",), ("threads=3",), False)],
    ids=["one process, then two", "two processes, then three"],
)
def test_a_checkpoint_is_resumed_only_by_the_layout_that_wrote_it(
    uninterrupted, tmp_path, first, then, resumed_from
):
    """A checkpoint of the one-process engine is resumed by the job in one process whatever
    `threads` now says; one of two worker processes is not resumed by three (the runs are
    dealt otherwise): that job trains from the start. Either way the rows are the same."""
    folder = tmp_path / "relaid"
    start_and_stop(folder, signal.SIGKILL, random.Random(), job=(*JOB[:-1], *first))
    resumed = run_cli(*JOB[:-1], *then, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    log = (folder / files.LOG).read_text()
    assert ("Resuming from" in log) == resumed_from
    assert ("belongs to another job" in log) != resumed_from
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)


def written_on_a_gpu(checkpoint: Path, monkeypatch) -> None:
    """Rewrite a checkpoint as a GPU would have written it: the same tensors, each storage
    tagged with the device it was saved from, cuda:0 (torch.save's location_tag)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, checkpoint)
    if not torch.cuda.is_available():  # as written on a GPU: it asks for one
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(checkpoint, weights_only=True)


def test_a_stacked_job_stopped_and_resumed_from_a_gpu_checkpoint_gives_the_same_results(
    tmp_path, data_dir, monkeypatch
):
    """The stacked path a GPU takes (stack_runs=always): a job stopped with Ctrl-C, its
    checkpoint rewritten as written on a GPU, resumes here to the rows of the same job run
    without a stop, bit for bit (both stacked on this machine)."""
    job = (*JOB, "stack_runs=always")
    whole = tmp_path / "whole"
    done = run_cli(*job, f"hydra.run.dir={whole}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "stopped"
    stopped = start_and_stop(folder, signal.SIGINT, random.Random(), job)
    assert stopped.returncode == 130, stopped.stderr
    written_on_a_gpu(folder / store.CHECKPOINT, monkeypatch)
    resumed = run_cli(*job, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in (folder / files.LOG).read_text()
    pd.testing.assert_frame_equal(comparable(folder), comparable(whole), check_exact=True)


def test_the_same_command_again_trains_nothing_and_more_seeds_train_only_the_new(
    uninterrupted, tmp_path
):
    folder = tmp_path / "growing"
    optbench.sweep(**(SETTINGS | {"seeds": [0]}), out=folder, progress=False)
    before = digest(folder / store.RUNS_CSV)
    optbench.sweep(**(SETTINGS | {"seeds": [0]}), out=folder, progress=False)
    assert "nothing to train" in (folder / files.LOG).read_text()
    assert digest(folder / store.RUNS_CSV) == before
    optbench.sweep(**SETTINGS, out=folder, progress=False)
    assert "Skipping the 3 runs already complete" in (folder / files.LOG).read_text()
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)


def test_resume_false_moves_the_old_results_aside(uninterrupted, tmp_path):
    folder = tmp_path / "again"
    folder.mkdir()
    old = {p.name: digest(p) for p in uninterrupted.glob("*.csv")}
    for name in old:
        (folder / name).write_bytes((uninterrupted / name).read_bytes())
    (folder / CONFIG_YAML).write_bytes((uninterrupted / CONFIG_YAML).read_bytes())
    optbench.sweep(**SETTINGS, resume=False, out=folder, progress=False)
    (aside,) = folder.glob("replaced-*")
    assert {p.name: digest(p) for p in aside.glob("*.csv")} == old
    pd.testing.assert_frame_equal(comparable(folder), comparable(uninterrupted), check_exact=True)


def test_a_folder_of_another_protocol_is_refused_and_left_untouched(uninterrupted, tmp_path):
    before = {p.name: digest(p) for p in uninterrupted.iterdir() if p.is_file()}
    with pytest.raises(optbench.ConfigError) as other:
        optbench.sweep(**SETTINGS, **{"train.batch_size": 32}, out=uninterrupted, progress=False)
    assert "another protocol" in str(other.value)
    assert "train.batch_size (100 -> 32)" in str(other.value)
    after = {p.name: digest(p) for p in uninterrupted.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != files.LOG} == {
        k: v for k, v in before.items() if k != files.LOG
    }


def test_a_damaged_runs_csv_is_reported_and_left_untouched(uninterrupted, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    text = (uninterrupted / store.RUNS_CSV).read_text()
    middle_of_a_row = text.index("\n", len(text) // 2) + 5
    (folder / store.RUNS_CSV).write_text(text[:middle_of_a_row])
    (folder / CONFIG_YAML).write_bytes((uninterrupted / CONFIG_YAML).read_bytes())
    before = digest(folder / store.RUNS_CSV)
    with pytest.raises(optbench.ResultsError) as resumed:
        optbench.sweep(**SETTINGS, out=folder, progress=False)
    assert "cannot be read as optbench results" in str(resumed.value)
    assert "left untouched" in str(resumed.value)
    assert digest(folder / store.RUNS_CSV) == before


def test_an_output_folder_that_cannot_be_written_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    failed = run_cli(*JOB, f"hydra.run.dir={blocker}/results", cwd=tmp_path)
    assert failed.returncode == 2
    assert f"Cannot write results to {blocker}/results" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "runs.csv"
    target.write_text("the complete old file\n")

    def fails_midway(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write("half of the new ")
            f.flush()
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(target, fails_midway)
    assert target.read_text() == "the complete old file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]


def test_compare_and_plot_refuse_to_mix_protocols_unless_told(uninterrupted, tmp_path):
    other = tmp_path / "other"
    done = run_cli(*JOB, "train.batch_size=32", f"hydra.run.dir={other}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("compare", "plot"):
        mixed = run_cli(command, str(uninterrupted), str(other), "--out", "both", cwd=tmp_path)
        assert mixed.returncode == 2, mixed.stderr
        assert "different protocols" in mixed.stderr
        assert "train.batch_size (100 -> 32)" in mixed.stderr
        assert not (tmp_path / "both").exists()
    allowed = run_cli(
        "compare", str(uninterrupted), str(other), "--out", "both", "--allow-mixed", cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr
    assert len(pd.read_csv(tmp_path / "both" / store.RUNS_CSV)) == 2 * len(
        pd.read_csv(uninterrupted / store.RUNS_CSV)
    )
    twice = run_cli("compare", str(uninterrupted), str(uninterrupted), "--out", "x", cwd=tmp_path)
    assert twice.returncode == 2 and "would count twice" in twice.stderr


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_hydra_launchers_write_one_sweep_folder_and_combine_every_job(launcher, tmp_path, data_dir):
    """Each job (here one per optimizer) writes its own numbered folder; the end of the
    multirun combines them all. submitit_local stands in for submitit_slurm."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        "run",
        "-m",
        f"hydra/launcher={launcher}",
        "optimizer=sgd,adam",
        "seeds=2",
        "dataset.train_size=1000",
        "train.steps=20",
        "train.eval_every=10",
        "threads=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    jobs = sorted(p.parent.name for p in sweep.glob(f"*/{store.RUNS_CSV}"))
    assert jobs == ["0", "1"]
    combined = pd.read_csv(sweep / store.RUNS_CSV)
    assert sorted(combined["optimizer"].unique()) == ["adam", "sgd"]
    assert len(combined) == 2 * 2 * 2  # optimizers x seeds x evaluations
    assert (sweep / "summary.csv").is_file()
    assert os.listdir(sweep / "0") and (sweep / "0" / CONFIG_YAML).is_file()
    # Hydra's multirun.yaml keeps the command line, not the working directory's path
    hydra_runtime = OmegaConf.load(sweep / "multirun.yaml").hydra.runtime
    assert "cwd" not in hydra_runtime and hydra_runtime.version_base == "1.3"
    for log in sweep.glob("*/optbench.log"):
        assert str(tmp_path) not in log.read_text()
    for folder in (sweep, sweep / "0", sweep / "1"):  # each as its job's end left it
        checked = subprocess.run(["sha256sum", "--check", "checksums.sha256"], cwd=folder)
        assert checked.returncode == 0, folder


def test_out_never_writes_over_results_and_names_the_seeds_compared(tmp_path, data_dir):
    """Five adam seeds and one sgd seed combined: --out into either job's folder is refused
    with its files untouched; into a new folder the ranking says which seeds it compares (the
    one they share, where no test can be computed), on screen and in its files; the same
    combination again into the folder it made is allowed."""
    adam, sgd = tmp_path / "adam", tmp_path / "sgd"
    for folder, seeds, optimizer in ((adam, 5, "adam"), (sgd, 1, "sgd")):
        optbench.run(optimizer=optimizer, seeds=seeds, debug="smoke", out=folder, progress=False)
    before = {p.name: p.read_bytes() for p in adam.iterdir() if p.is_file()}
    for command in ("compare", "plot"):
        refused = run_cli(command, str(adam), str(sgd), "--out", str(adam), cwd=tmp_path)
        assert refused.returncode == 2
        assert f"--out {adam} already holds a job's results" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in adam.iterdir() if p.is_file()} == before
    assert not list(adam.glob("replaced-*"))

    both = tmp_path / "both"
    for _ in range(2):  # the same combination again rewrites what it wrote
        done = run_cli("compare", str(adam), str(sgd), "--out", str(both), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert (
            "Seeds compared: 0, the seeds every optimizer has and none diverged on; "
            "left out: adam seeds 1-4." in done.stdout
        )
    ranking = pd.read_csv(both / "ranking.csv").set_index("optimizer")
    assert ranking.loc["adam", "seeds_left_out"] == "1-4"
    assert ranking["seeds"].astype(str).tolist() == ["0", "0"]
    assert ranking["p_vs_best_holm"].isna().all()  # one seed in common: no test
    text = (both / "ranking.md").read_text()
    assert "Seeds compared: 0" in text and "left out: adam seeds 1-4" in text
    second = next(line for line in text.splitlines() if line.startswith("| 2 |"))
    assert "cannot test" in second and "≈ best" not in second

    other = run_cli("plot", str(sgd), "--out", str(both), cwd=tmp_path)
    assert other.returncode == 2 and f"already holds other runs ({both}" in other.stderr


def test_a_multirun_with_its_values_reordered_is_refused_before_training(tmp_path, data_dir):
    """Job i writes into folder i: the same sweep with its values in another order would
    retrain every job into another job's folder, so it is refused, naming the values."""
    sweep = tmp_path / "sweep"
    first = run_cli(
        "run",
        "-m",
        "optimizer=adam,sgd",
        "seeds=1",
        SMOKE,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    before = {
        p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.name != "optbench.log"
    }
    again = run_cli(
        "run",
        "-m",
        "optimizer=sgd,adam",
        "seeds=1",
        SMOKE,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert again.returncode == 2
    assert (
        f"{sweep} already holds the jobs of another multirun: its job 0 was trained with "
        "optimizer=adam, and this command's job 0 has optimizer=sgd" in again.stderr
    )
    assert "Traceback" not in again.stderr
    after = {
        p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.name != "optbench.log"
    }
    assert after == before
    added = run_cli(  # the same order, one value more: the new job joins the sweep
        "run",
        "-m",
        "optimizer=adam,sgd,rmsprop",
        "seeds=1",
        SMOKE,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    combined = pd.read_csv(sweep / store.RUNS_CSV)
    assert sorted(combined["optimizer"].unique()) == ["adam", "rmsprop", "sgd"]
    assert not combined.duplicated(["optimizer", "seed", "step"]).any()

    shutil.copytree(sweep / "0", sweep / "copy_of_0")  # a job folder copied by hand
    twice = run_cli(
        "run",
        "-m",
        "optimizer=adam,sgd,rmsprop",
        "seeds=1",
        SMOKE,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert twice.returncode == 2 and "Traceback" not in twice.stderr
    assert (
        f"the jobs' results cannot be combined: run adam seed 0 is in two job folders, "
        f"{sweep / '0'} and {sweep / 'copy_of_0'}" in twice.stderr
    )
    assert pd.read_csv(sweep / store.RUNS_CSV).equals(combined)  # left as it was
