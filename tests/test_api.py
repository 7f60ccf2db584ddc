"""optbench from Python (optbench.api) against the command line: the same command through
both writes the same folder and numbers, load() reads what the commands wrote, bad input
raises one exception type with the command's own paragraph, a folder the API wrote is
resumed by the command, and docs/python.md runs as written."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pandas as pd
import pytest
from constants import SMOKE
from test_faults import mount_tmpfs, unmount

import optbench
from optbench.api import command_line
from optbench.results import store

from conftest import ROOT, run_cli

SWEEP = dict(experiment="wizard_ffnn", optimizers=["sgd", "adam"], seeds=2, debug="smoke")
SWEEP_ARGS = ["experiment=wizard_ffnn", "optimizers=[sgd,adam]", "seeds=2", "debug=smoke"]
FOLDER = Path("outputs", "wizard_ffnn", "debug=smoke,optimizers=[sgd,adam]")  # the default


def without_wall_s(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without its seconds, the one measure that differs between two runs of a job."""
    return frame.drop(columns=[c for c in frame if c.startswith("wall_s")])


@pytest.fixture(scope="module")
def by_the_command(tmp_path_factory, data_dir) -> Path:
    """`optbench sweep ...` into its default folder."""
    cwd = tmp_path_factory.mktemp("command")
    done = run_cli("sweep", *SWEEP_ARGS, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / FOLDER


@pytest.fixture(scope="module")
def by_the_api(tmp_path_factory, data_dir) -> optbench.Results:
    """optbench.sweep(...) into its default folder."""
    with contextlib.chdir(tmp_path_factory.mktemp("api")):
        return optbench.sweep(**SWEEP, progress=False)


def test_the_api_writes_what_the_command_writes(by_the_command, by_the_api):
    assert by_the_api.folder.parts[-3:] == FOLDER.parts  # the command's default folder
    assert sorted(p.name for p in by_the_api.folder.iterdir()) == sorted(
        p.name for p in by_the_command.iterdir()
    )
    for name in (store.RUNS_CSV, store.SUMMARY_CSV):
        pd.testing.assert_frame_equal(
            without_wall_s(pd.read_csv(by_the_api.folder / name)),
            without_wall_s(pd.read_csv(by_the_command / name)),
            check_exact=True,
        )


def test_load_of_the_commands_folder_equals_what_the_api_returned(by_the_command, by_the_api):
    loaded = optbench.load(by_the_command)
    assert loaded.folder == by_the_command
    assert len(by_the_api.runs) == 2 * 2 * 2  # optimizers x seeds x evaluation steps
    assert list(by_the_api.runs.columns) == store.RUN_COLUMNS
    for table in ("runs", "summary"):
        pd.testing.assert_frame_equal(
            without_wall_s(getattr(loaded, table)),
            without_wall_s(getattr(by_the_api, table)),
            check_exact=True,
        )
    pd.testing.assert_frame_equal(loaded.ranking, by_the_api.ranking, check_exact=True)
    assert set(by_the_api.ranking["optimizer"]) == {"sgd", "adam"}
    # the returned frames are the folder's files, read back
    pd.testing.assert_frame_equal(by_the_api.runs, store.read_runs(by_the_api.folder))


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory, data_dir) -> Path:
    """A smoke suite of two workloads, two optimizers and one seed, by the API."""
    folder = tmp_path_factory.mktemp("api") / "suite"
    optbench.suite(
        overrides=[
            "workloads=[mnist_ffnn,mnist_lenet]",
            "optimizers=[sgd,adam]",
            "seeds=1",
            "target.test_accuracy=0.5",
            SMOKE,
        ],
        out=folder,
        progress=False,
    )
    return folder


def test_load_recomputes_a_missing_summary_and_reads_a_suite(by_the_command, small_suite, tmp_path):
    folder = tmp_path / "runs_only"
    folder.mkdir()
    (folder / store.RUNS_CSV).write_bytes((by_the_command / store.RUNS_CSV).read_bytes())
    loaded = optbench.load(folder)
    pd.testing.assert_frame_equal(loaded.summary, pd.read_csv(by_the_command / store.SUMMARY_CSV))
    assert loaded.ranking is None
    suite = optbench.load(small_suite)
    workloads = pd.read_csv(small_suite / "workloads.csv")
    ran = workloads.loc[workloads["status"] == "ran", "workload"]
    assert sorted(suite.runs["experiment"].unique()) == sorted(ran)
    assert len(suite.runs) == sum(len(store.read_runs(suite.folder / w)) for w in ran)
    assert list(suite.ranking.columns)[0] == "optimizer"


def test_settings_and_overrides_become_the_command_line():
    settings = dict(optimizer="adam", seeds=5, resume=False, debug=None, lr_grid=[0.1, 1e-05])
    args = command_line(
        "run", {"optimizer.lr": 0.01, "optimizer.betas": (0.9, 0.99)}, None, settings
    )
    assert args == [
        "optimizer=adam",
        "seeds=5",
        "resume=false",
        "debug=null",
        "lr_grid=[0.1,1e-05]",
        "optimizer.lr=0.01",
        "optimizer.betas=[0.9,0.99]",
    ]
    assert command_line("sweep", ["optimizers=[sgd]"], "my results", {"seeds": 2}) == [
        "seeds=2",
        "optimizers=[sgd]",
        "hydra.run.dir='my results'",
    ]
    assert command_line("suite", None, "a,b", {"workloads": ["mnist_ffnn"]}) == [
        "workloads=[mnist_ffnn]",
        "hydra.sweep.dir=a,b",  # workloads.parse quotes its folder itself
    ]
    for refused in (["-m", "optimizer=sgd,adam"], "optimizer.lr=0.1"):
        with pytest.raises(optbench.ConfigError):
            command_line("run", refused)
    with pytest.raises(optbench.ConfigError, match="both name the folder"):
        command_line("run", ["hydra.run.dir=x"], "y")


# (API call, the same command line); {tmp} is the test's folder, which holds a_file
BAD_INPUT = {
    "an unknown optimizer": ("run", dict(optimizer="adamm"), ["optimizer=adamm"]),
    "a misspelt key": ("run", dict(seed=3), ["seed=3"]),
    "a misspelt nested key": (
        "run",
        dict(overrides={"optimizer.lrr": 0.1}),
        ["optimizer.lrr=0.1"],
    ),
    "seeds listed twice": ("sweep", dict(seeds=[1, 1]), ["seeds=[1,1]"]),
    "no seeds": ("sweep", dict(seeds=0), ["seeds=0"]),
    "an unknown experiment": ("sweep", dict(experiment="wizard"), ["experiment=wizard"]),
    "an unwritable folder": (
        "run",
        dict(out="{tmp}/a_file/results"),
        ["hydra.run.dir={tmp}/a_file/results"],
    ),
    "an unknown workload": ("suite", dict(workloads=["mnist"]), ["workloads=[mnist]"]),
}


def _fill(value, tmp: Path):
    return value.format(tmp=tmp) if isinstance(value, str) else value


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_raises_config_error_with_the_commands_message(case, tmp_path, data_dir):
    command, kwargs, args = BAD_INPUT[case]
    (tmp_path / "a_file").write_text("")
    kwargs = {k: _fill(v, tmp_path) for k, v in kwargs.items()}
    args = [a.format(tmp=tmp_path) for a in args]
    done = run_cli(command, *args, "debug=smoke", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    with contextlib.chdir(tmp_path), pytest.raises(optbench.ConfigError) as raised:
        getattr(optbench, command)(**kwargs, debug="smoke")
    assert done.stderr == f"optbench: error: {raised.value}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_a_folder_of_another_protocol_raises_from_inside_the_job(by_the_api, tmp_path):
    """A refusal that only the job itself can make (it reads the folder's runs): carried
    out of Hydra as the same ConfigError, the folder untouched."""
    folder = by_the_api.folder
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "optbench.log"}
    other = ["train.batch_size=32", f"hydra.run.dir='{folder}'"]  # quoted: = , [ in its name
    done = run_cli("sweep", *SWEEP_ARGS, *other, cwd=tmp_path)
    assert done.returncode == 2 and "another protocol" in done.stderr
    with pytest.raises(optbench.ConfigError) as raised:
        optbench.sweep(**SWEEP, overrides={"train.batch_size": 32}, out=folder, progress=False)
    assert done.stderr == f"optbench: error: {raised.value}\n"
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "optbench.log"}
    assert after == before


def test_a_failing_resource_raises_resource_error_with_the_commands_message(tmp_path, data_dir):
    (tmp_path / "a_file").write_text("")
    destination = {"logger.dir": f"{tmp_path}/a_file"}
    done = run_cli("run", "logger=tensorboard", f"logger.dir={tmp_path}/a_file", cwd=tmp_path)
    assert done.returncode == 74, done.stderr
    with contextlib.chdir(tmp_path), pytest.raises(optbench.ResourceError) as raised:
        optbench.run(logger="tensorboard", overrides=destination)
    assert done.stderr == f"optbench: error: {raised.value}\n"
    assert str(raised.value) == raised.value.strerror
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_folder_the_api_wrote_is_resumed_by_the_command(by_the_command, tmp_path):
    folder = tmp_path / "grown"
    first = optbench.sweep(**(SWEEP | {"seeds": [0]}), out=folder, progress=False)
    assert first.folder == folder and set(first.runs["seed"]) == {0}
    done = run_cli("sweep", *SWEEP_ARGS, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Skipping the 2 runs already complete" in (folder / "optbench.log").read_text()
    pd.testing.assert_frame_equal(
        without_wall_s(pd.read_csv(folder / store.RUNS_CSV)),
        without_wall_s(pd.read_csv(by_the_command / store.RUNS_CSV)),
        check_exact=True,
    )


def training_calls(code: str) -> list[str]:
    """Each call of optbench.run, sweep, tune or suite in code, up to its closing parenthesis."""
    calls = []
    for start in re.finditer(r"optbench\.(?:run|sweep|tune|suite)\(", code):
        depth, end = 1, start.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(code[end], 0)
            end += 1
        calls.append(code[start.start() : end])
    return calls


def test_the_examples_of_docs_python_md_run_as_written(tmp_path, data_dir):
    text = (ROOT / "docs" / "python.md").read_text()
    guide = text.split("## Reference")[0]
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.DOTALL)
    assert len(blocks) >= 5
    for call in training_calls("\n".join(blocks)):  # smoke-sized: the test takes seconds
        assert 'debug="smoke"' in call, call
    namespace: dict = {}
    with contextlib.chdir(tmp_path):
        for block in blocks:
            exec(compile(block, "docs/python.md", "exec"), namespace)
    assert (tmp_path / "smoke_accuracy.png").read_bytes().startswith(b"\x89PNG")
    final = namespace["final"]
    assert sorted(final["optimizer"]) == ["adam", "sgd"]
    run_folder = Path("outputs", "wizard_ffnn", "debug=smoke,optimizer.lr=0.01,optimizer=adam")
    assert namespace["adam"].folder == tmp_path / run_folder


def test_a_suite_through_the_api_is_the_commands_suite(tmp_path, data_dir):
    """The suite's own path (one sweep job per workload, a Hydra multirun, then its files)."""
    done = run_cli(
        "suite",
        "workloads=[mnist_ffnn]",
        "optimizers=[sgd,adam]",
        "seeds=2",
        "debug=smoke",
        f"hydra.sweep.dir={tmp_path / 'command'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    suite = optbench.suite(
        workloads=["mnist_ffnn"],
        optimizers=["sgd", "adam"],
        seeds=2,
        debug="smoke",
        out=tmp_path / "api",
        progress=False,
    )
    assert suite.folder == tmp_path / "api" and (suite.folder / "suite.html").is_file()
    assert sorted(p.name for p in suite.folder.rglob("*")) == sorted(
        p.name for p in (tmp_path / "command").rglob("*")
    )
    command = optbench.load(tmp_path / "command")
    pd.testing.assert_frame_equal(without_wall_s(suite.runs), without_wall_s(command.runs))
    pd.testing.assert_frame_equal(without_wall_s(suite.summary), without_wall_s(command.summary))
    assert set(suite.runs["experiment"]) == {"mnist_ffnn"}
    pd.testing.assert_frame_equal(suite.ranking, pd.read_csv(suite.folder / "average_ranks.csv"))


def test_tune_returns_every_trial(tmp_path, data_dir):
    tuned = optbench.tune(
        optimizers=["sgd", "adam"],
        seeds=1,
        debug="smoke",
        overrides=["tuning.trials=2"],
        out=tmp_path / "tuned",
        progress=False,
    )
    assert sorted(tuned.runs["optimizer"].unique()) == [  # two settings drawn per optimizer
        "adam trial 0",
        "adam trial 1",
        "sgd trial 0",
        "sgd trial 1",
    ]
    assert tuned.runs.groupby("optimizer")["lr"].nunique().eq(1).all()
    assert tuned.ranking is None and (tuned.folder / "report.md").is_file()


def test_a_full_disk_during_the_job_raises_resource_error_with_the_commands_message(
    tmp_path, data_dir
):
    """A fault only the job meets (its writes): carried out of Hydra as the same
    ResourceError. Each side writes onto a real 200 kB file system of its own."""
    cli_folder, api_folder = tmp_path / "command", tmp_path / "api"
    for folder in (cli_folder, api_folder):
        mount_tmpfs(folder, "size=200k")
    try:
        done = run_cli("run", "seeds=2", "debug=smoke", f"hydra.run.dir={cli_folder}", cwd=tmp_path)
        assert done.returncode == 74, done.stderr
        with pytest.raises(optbench.ResourceError) as raised:
            optbench.run(seeds=2, debug="smoke", out=api_folder, progress=False)
    finally:
        for folder in (cli_folder, api_folder):
            unmount(folder)
    assert "is out of space" in str(raised.value)
    assert done.stderr.replace(str(cli_folder), str(api_folder)) == (
        f"optbench: error: {raised.value}\n"
    )
