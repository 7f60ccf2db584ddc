"""Shared fixtures: real MNIST on disk, and configs and plans made exactly as the CLI makes them."""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import optbench.config.schema  # noqa: F401  registers the typed schema
from optbench import cli
from optbench.compose.jobs import compose_plan
from optbench.data import prepare
from optbench.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
OPTBENCH = str(Path(sys.executable).with_name("optbench"))


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_module("optbench.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def sweep_plan(*overrides: str) -> Plan:
    """The plan that `optbench sweep OVERRIDES` would train."""
    return compose_plan("sweep", *overrides)


def run_plan(*overrides: str) -> Plan:
    """The plan that `optbench run OVERRIDES` would train."""
    return compose_plan("run", *overrides)


# Tests that train on a device run on every device there is: the CPU always, CUDA when
# present (`make gpu-check` runs the CUDA ones on a GPU machine).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device override of a test that runs on every device: device=cpu, device=cuda."""
    return f"device={request.param}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST, prepared once (offline source where there is no network)."""
    directory = prepare.default_data_dir()
    prepare.prepare("mnist", directory)
    return directory


def default_ctrl_c() -> None:
    """For a child process that a test stops with SIGINT: tests started from a background
    shell job inherit an ignored SIGINT, and so would the child; give it Ctrl-C's default,
    as a terminal does (Popen's preexec_fn)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`optbench ARGS` from cwd, run in this process through cli.main: what the console
    script does, without its seconds of start-up. The tests whose subject is the console
    script itself (a signal, a terminal, the installed wheel) run OPTBENCH instead."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as stop:  # raised inside a Hydra job, as the console script exits
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        finally:
            sys.argv = argv
            for handler in logging.getLogger().handlers:  # the job's log file, its console
                handler.close()
            logging.getLogger().handlers.clear()
    return subprocess.CompletedProcess(["optbench", *args], code, out.getvalue(), err.getvalue())
