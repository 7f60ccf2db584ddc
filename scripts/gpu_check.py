"""The GPU self-check: `make gpu-bundle` here, then `make gpu-check` on a machine with CUDA.

    python scripts/gpu_check.py gather   # here: gpu-bundle/ (wheels, MNIST compressed)
    python3 scripts/gpu_check.py         # there: the checks below, one summary at the end

A GPU machine may have PyTorch, torchvision, pandas, matplotlib, scipy and tqdm but no
network and none of optbench's other dependencies. `gather` puts into gpu-bundle/ the wheels
of those (pure Python, or built for that machine's Python) and of optbench itself, and the
four MNIST files gzip-compressed: about 15 MB, to carry with the working tree. The check
installs the wheels into gpu-bundle/site with pip, offline and without dependencies (the
machine's own torch is never touched), unpacks MNIST into data/, and then:

1. runs every device test on CUDA (`pytest -k cuda`: the tests parametrised over devices);
2. trains a stacked sweep and the same runs one by one on CUDA, one step, and prints the
   largest relative difference against the tolerance docs/reproducibility.md states;
3. times `optbench sweep` of wizard_ffnn (5 seeds) and of examples_cnn (10 seeds) on CUDA,
   results kept in gpu-check/;
4. prints one summary with the device's name.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "gpu-bundle"
SITE = BUNDLE / "site"
OUTPUT = ROOT / "gpu-check"
MNIST_RAW = ROOT / "data" / "MNIST" / "raw"
# optbench's dependencies a GPU machine's image may lack (versions from constraints.txt)
MISSING = [
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",  # only a source archive on the index: built into a wheel here
    "PyYAML",
    "optuna",
    "alembic",
    "SQLAlchemy",
    "greenlet",
    "Mako",
    "colorlog",
    "hydra-joblib-launcher",
    "hydra-submitit-launcher",
    "submitit",
    "pytorch_optimizer",  # optimizer=lion, soap, muon, ... (configs/optimizer/)
    "opt_einsum",
    "scikit-posthocs",  # the suite's critical-difference diagram
    "statsmodels",
    "seaborn",
    "patsy",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
STACKED_RTOL = 1e-6  # docs/reproducibility.md: a stacked ffnn run after one step


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.strip()
    return name


def gather(python_version: str) -> None:
    """gpu-bundle/: the wheels and MNIST, from this machine's pip and data/."""
    wheels = BUNDLE / "wheels"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    antlr = pinned("antlr4-python3-runtime")
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), antlr], check=True)
    platform = [f"--platform={p}" for p in PLATFORMS]
    for name in MISSING:
        if name == "antlr4-python3-runtime":
            continue
        subprocess.run(
            [
                *pip,
                "download",
                "--no-deps",
                "-q",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                f"--python-version={python_version}",
                "--implementation=cp",
                *platform,
                pinned(name),
            ],
            check=True,
        )
    mnist = BUNDLE / "mnist"
    mnist.mkdir()
    for path in sorted(MNIST_RAW.glob("*-ubyte")):
        with open(path, "rb") as raw, gzip.open(mnist / f"{path.name}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    print(f"gpu-bundle/: {len(list(wheels.iterdir()))} wheels and MNIST, {size / 1e6:.1f} MB")
    print("Carry it with the working tree, then run `make gpu-check` there.")


def environment() -> dict:
    """The environment for every step: the bundle's packages first, MNIST in data/."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OPTBENCH_DATA_DIR=str(ROOT / "data"))
    if any(importlib.util.find_spec(name) is None for name in ("hydra", "optuna", "optbench")):
        wheels = sorted((BUNDLE / "wheels").glob("*.whl"))
        if not wheels:
            sys.exit(
                "gpu-check: optbench's dependencies are missing and there is no "
                "gpu-bundle/: run `make gpu-bundle` where pip works, and carry gpu-bundle/."
            )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--upgrade",
                "--target",
                str(SITE),
                *map(str, wheels),
            ],
            check=True,
        )
        env["PYTHONPATH"] = os.pathsep.join([str(SITE), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    if not (MNIST_RAW / "train-images-idx3-ubyte").is_file():
        MNIST_RAW.mkdir(parents=True, exist_ok=True)
        for packed in sorted((BUNDLE / "mnist").glob("*.gz")):
            with gzip.open(packed, "rb") as source, open(MNIST_RAW / packed.stem, "wb") as raw:
                shutil.copyfileobj(source, raw)
    return env


def python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return done.stdout.strip()


STACKED_CHECK = """
import torch
from optbench import engine
from optbench.jobs import compose_plan
overrides = ["device=cuda", "optimizers=[sgd,adam,rmsprop]", "seeds=4",
             "dataset.train_size=1000", "train.steps=1", "train.eval_every=1"]
worst = 0.0
for mode in ("always", "never"):
    plan = compose_plan("sweep", *overrides, f"stack_runs={mode}")
    runs = engine.train(plan, progress=False)
    if mode == "always":
        stacked = runs
for column in ("train_loss", "test_loss", "test_accuracy"):
    a, b = torch.tensor(stacked[column].to_numpy()), torch.tensor(runs[column].to_numpy())
    worst = max(worst, ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item())
print(worst)
"""


def timed_sweep(name: str, env: dict, *overrides: str) -> tuple[float, str]:
    folder = OUTPUT / name
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench.cli",
            "sweep",
            *overrides,
            "device=cuda",
            "resume=false",
            f"hydra.run.dir={folder}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return seconds, f"FAILED (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    import pandas as pd

    runs = pd.read_csv(folder / "runs.csv")
    final = runs[runs.step == runs.step.max()]
    return seconds, (
        f"{final[['optimizer', 'seed']].drop_duplicates().shape[0]} runs, mean final test "
        f"accuracy {final.test_accuracy.mean():.4f}, results in {folder.relative_to(ROOT)}/"
    )


def check() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: PyTorch sees no CUDA device on this machine; run it where one is.")
        return 1
    device = torch.cuda.get_device_name()
    env = environment()
    summary = [f"device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}"]
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print(tests.stdout[-3000:], tests.stderr[-2000:], sep="\n")
    last = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else "no output"
    summary.append(f"device tests on CUDA (pytest -k cuda): {last}")
    try:
        worst = float(python(STACKED_CHECK, env))
        verdict = "within" if worst <= STACKED_RTOL else "OUTSIDE"
        summary.append(
            f"stacked vs alone, 12 runs, one step: largest relative difference {worst:.2e}, "
            f"{verdict} the stated tolerance {STACKED_RTOL:g}"
        )
    except RuntimeError as error:
        summary.append(f"stacked vs alone: FAILED ({error})")
    for name, overrides in (
        ("wizard_ffnn", ("seeds=5",)),
        ("examples_cnn", ("experiment=examples_cnn", "seeds=10")),
    ):
        seconds, outcome = timed_sweep(name, env, *overrides)
        summary.append(f"optbench sweep {' '.join(overrides)}: {seconds:.1f} s, {outcome}")
    print("\n== gpu-check summary ==")
    print("\n".join(summary))
    ok = tests.returncode == 0 and not any(
        "FAILED" in line or "OUTSIDE" in line for line in summary
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=["gather", "check"], default="check")
    parser.add_argument(
        "--python-version", default="3.12", help="of the GPU machine, for gather (default 3.12)"
    )
    options = parser.parse_args()
    if options.action == "gather":
        gather(options.python_version)
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
