"""Shared fixtures: real MNIST on disk, and configs composed exactly as the CLI composes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import optbench.config  # noqa: F401  registers the typed schema
from optbench import data
from optbench.cli import sweep_optimizer_configs

ROOT = Path(__file__).resolve().parent.parent
OPTBENCH = str(Path(sys.executable).with_name("optbench"))


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_module("optbench.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_sweep(*overrides: str) -> tuple[DictConfig, list[DictConfig]]:
    """The config and the per-optimizer configs that `optbench sweep` would train."""
    with initialize_config_module("optbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
        return cfg, sweep_optimizer_configs(cfg, list(overrides))


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
    directory = data.default_data_dir()
    data.prepare("mnist", directory)
    return directory


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [OPTBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
