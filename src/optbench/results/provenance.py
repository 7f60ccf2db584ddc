"""config.yaml: what produced a results folder (the resolved config, every optimizer
setting, the command line, the code and the machine), and reading a folder's protocol back."""

from __future__ import annotations

import platform
from pathlib import Path

from omegaconf import OmegaConf

from optbench import __version__
from optbench.config.schema import git_revision, protocol_config, protocol_differences
from optbench.files import atomic_write
from optbench.plan import Plan

CONFIG_YAML = "config.yaml"


def environment() -> dict:
    """What produced the results: optbench's version and git revision, library versions,
    the CPU."""
    import torch
    import torchvision

    return {
        "optbench_version": __version__,
        "git_revision": git_revision(),
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "device_name": _cpu_name(),  # a CUDA job's layout (training.loop.layout) names its GPU
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recorded_config(results_dir: Path) -> dict:
    """results_dir's config.yaml as a plain dict (empty when there is none)."""
    path = Path(results_dir) / CONFIG_YAML
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def _recorded_protocol(results_dir: Path) -> dict | None:
    """The protocol that results_dir's config.yaml records (None without one)."""
    recorded = recorded_config(results_dir)
    return protocol_config(recorded) if recorded else None


def differences(a: Path, b: Plan | Path) -> str:
    """The protocol keys that differ between folder a and a plan (or folder) b."""
    first = _recorded_protocol(a)
    second = _recorded_protocol(b) if isinstance(b, Path) else protocol_config(b.config)
    if first is None or second is None:
        return "(a folder has no config.yaml to compare)"
    return "; ".join(protocol_differences(first, second)) or "(none recorded)"


def write_config(
    path: Path,
    plan: Plan,
    optimizer_configs: dict,
    overrides: list[str],
    provenance_info: dict | None = None,
) -> None:
    """config.yaml: the plan's resolved config, the hyperparameters of every optimizer in
    the folder's runs (name -> config), the command-line overrides, and provenance (taken
    now unless given)."""
    document = {**plan.config, "optimizer_configs": optimizer_configs}
    document["provenance"] = {
        **(provenance_info or environment()),
        "overrides": list(overrides),
        "protocol_fingerprint": plan.fingerprint,
    }
    text = OmegaConf.to_yaml(OmegaConf.create(document))
    atomic_write(path, lambda tmp: tmp.write_text(text))
