"""The GPU self-check: `make gpu-bundle` here, then `make gpu-check` on a machine with CUDA.

    python scripts/gpu_check.py gather          # here: gpu-bundle/ (wheels, MNIST compressed)
    python3 scripts/gpu_check.py check          # there: the stages below, then one summary
    python3 scripts/gpu_check.py check --device cpu   # the same stages, small, on the CPU

A GPU machine may have PyTorch, torchvision, pandas, matplotlib, scipy and tqdm but no
network and none of optbench's other dependencies. `gather` puts into gpu-bundle/ the wheels
the check needs besides those (Hydra, OmegaConf, PyYAML, pytorch_optimizer, opt_einsum,
pytest and its dependencies) for Python 3.10 to 3.13, the four MNIST files gzip-compressed,
and a manifest of what it holds. The check tests the working tree itself (src/ and tests/,
never a wheel of optbench):

1. checks the Python version against the bundle's, and that the bundle was gathered for
   the dependencies the tree pins now (constraints.txt); refuses a stale one;
2. installs the wheels the machine lacks into gpu-bundle/site with pip, offline and without
   dependencies (the machine's own packages, torch first, are never touched), and unpacks
   MNIST into data/;
3. runs the device tests (`pytest -k cuda` on the test files parametrised over devices);
4. trains stacked and run by run, ffnn and LeNet: losses within the stated relative
   tolerance, test accuracies within two test examples;
5. trains a stacked LeNet sweep twice and once stopped with Ctrl-C and resumed: the same
   rows each time (cuDNN deterministic);
6. trains one short sweep under torch.cuda.set_sync_debug_mode("warn") and names every line
   of the step loop that synchronises with the host on every step;
7. times the LeNet stacked and run by run, with the peak GPU memory;
8. times `optbench sweep` of wizard_ffnn (5 seeds) and one epoch of examples_cnn (10 seeds).

Each stage runs in its own process under its own time limit, inside a total budget sized
to finish within 10 minutes; a stage that fails, or runs out of time, is reported and the
next one runs. The summary is printed at the end whatever happened, and written to
gpu-check/summary.txt.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "gpu-bundle"
WHEELS = BUNDLE / "wheels"
SITE = BUNDLE / "site"
MANIFEST = BUNDLE / "manifest.json"
OUTPUT = ROOT / "gpu-check"
SUMMARY = OUTPUT / "summary.txt"
MNIST_RAW = ROOT / "data" / "MNIST" / "raw"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# What the check imports beyond the machine's own torch, torchvision, pandas, matplotlib,
# scipy and tqdm: optbench's configs (Hydra, OmegaConf, PyYAML), the registry optimizers
# that may train stacked (pytorch_optimizer, and opt_einsum for Kron), and pytest. Versions
# from constraints.txt; exceptiongroup and tomli are pytest's on Python 3.10 only.
PURE = [
    "hydra-core",
    "omegaconf",
    "pytorch_optimizer",
    "opt_einsum",
    "pytest",
    "pluggy",
    "iniconfig",
    "Pygments",
    "packaging",
    "exceptiongroup",
    "tomli",
]
BUILT = ["antlr4-python3-runtime"]  # only a source archive on the index: built into a wheel
COMPILED = ["PyYAML"]  # one wheel per Python version
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# docs/reproducibility.md: a stacked ffnn run after one step, a stacked LeNet after two
# On CUDA the stacked LeNet's grouped convolutions are other cuDNN kernels than a lone
# LeNet's: their gradients round differently, and Adam's first steps, which divide each
# gradient entry by its own size, turn a rounding in an entry near zero into a step of the
# full learning rate (an H200, torch 2.11: 2.6e-5 after two steps, Adam; docs/reproducibility.md).
STACKED_RTOL = {
    ("ffnn", "cpu"): 1e-6,
    ("lenet", "cpu"): 1e-5,
    ("ffnn", "cuda"): 1e-6,
    ("lenet", "cuda"): 1e-4,
}
BUDGET_S = 540  # the whole check, within the 10 minutes of one call on a lent machine
# Each stage's own time limit (seconds) and sizes; on the CPU (--device cpu, the simulation
# of a lent machine) everything is small.
SIZES = {
    "cuda": {
        "tests": (150, "cuda"),
        "stacked": (60, {"seeds": 4}),
        "lenet_resume": (120, {"steps": 300, "eval_every": 50, "train_size": 6000}),
        "sync": (60, {"steps": 40}),
        "lenet_timing": (60, {"seeds": 2, "steps": 200}),
        "sweeps": (90, [("seeds=5",), ("experiment=examples_cnn", "seeds=10", "train.epochs=1")]),
        "smaller": (),
    },
    "cpu": {
        "tests": (150, "cpu and (stacked_lenets or kernel_chosen)"),
        "stacked": (90, {"seeds": 2}),
        "lenet_resume": (150, {"steps": 60, "eval_every": 10, "train_size": 1000}),
        "sync": (30, {"steps": 10}),
        "lenet_timing": (60, {"seeds": 1, "steps": 10}),
        "sweeps": (60, [("seeds=1", "train.steps=100", "train.eval_every=50")]),
        # overrides for every plan: 500 test images, a narrower LeNet (the CPU is slow at
        # the stacked one's grouped convolutions)
        "smaller": (
            "dataset.test_size=500",
            "model.conv1_channels=4",
            "model.conv2_channels=6",
            "model.hidden=32",
        ),
    },
}


class StageFailed(Exception):
    """A stage's check did not hold; its message is the summary's line."""


# ---------------------------------------------------------------------------------------
# The bundle


def requirements() -> list[str]:
    """What the bundle holds, pinned as constraints.txt pins it (latest otherwise)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        pins[name.lower()] = line.strip() if version else None
    return [pins.get(name.lower()) or name for name in [*PURE, *BUILT, *COMPILED]]


def fingerprint() -> str:
    """What makes a bundle current: the requirements and the Python versions."""
    text = json.dumps({"requirements": requirements(), "pythons": PYTHONS})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tree_revision() -> str:
    """The tree's git revision, with a hash of its uncommitted changes ("" without git)."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        diff = subprocess.run([*git, "diff", "HEAD"], capture_output=True, text=True)
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    dirty = f"+dirty-{hashlib.sha256(diff.stdout.encode()).hexdigest()[:12]}"
    return head.stdout.strip() + (dirty if diff.stdout else "")


def gather() -> None:
    """gpu-bundle/: the wheels for every Python of PYTHONS, MNIST, and the manifest."""
    shutil.rmtree(BUNDLE, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    pure, built, compiled = requirements()[: len(PURE)], BUILT, COMPILED
    any_dir = WHEELS / "any"
    any_dir.mkdir(parents=True)
    pinned_built = [r for r in requirements() if r.split("==")[0] in built]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(any_dir), *pinned_built], check=True
    )
    download = [*pip, "download", "--no-deps", "-q", "--only-binary=:all:", "--implementation=cp"]
    platform = [f"--platform={p}" for p in PLATFORMS]
    # pure wheels: the oldest Python's, which install on every later one
    subprocess.run([*download, "--python-version=3.10", "-d", str(any_dir), *pure], check=True)
    for version in PYTHONS:
        folder = WHEELS / f"cp{version.replace('.', '')}"
        pinned = [r for r in requirements() if r.split("==")[0] in compiled]
        args = [f"--python-version={version}", *platform, "-d", str(folder), *pinned]
        subprocess.run([*download, *args], check=True)
    mnist = BUNDLE / "mnist"
    mnist.mkdir()
    for path in sorted(MNIST_RAW.glob("*-ubyte")):
        with open(path, "rb") as raw, gzip.open(mnist / f"{path.name}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
    manifest = {
        "fingerprint": fingerprint(),
        "requirements": requirements(),
        "pythons": list(PYTHONS),
        "tree": tree_revision(),
        "gathered": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    count = len(list(WHEELS.rglob("*.whl")))
    print(f"gpu-bundle/: {count} wheels for Python {', '.join(PYTHONS)} and MNIST, ")
    print(f"{size / 1e6:.1f} MB, gathered at {manifest['tree'] or 'an unknown revision'}.")
    print("Carry it with the working tree, then run `make gpu-check` there.")


def check_python_and_bundle() -> tuple[int, str]:
    """(0, the bundle's description), or (exit code, one paragraph saying why the check
    cannot run here and the way out)."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running not in PYTHONS:
        return 2, (
            f"gpu-check: this Python is {running} ({sys.executable}); optbench and the "
            f"bundle's wheels need Python {PYTHONS[0]} to {PYTHONS[-1]}. Run the check with "
            "one of those, e.g. `make gpu-check PYTHON=python3.12`."
        )
    if not MANIFEST.is_file():
        return 74, (
            "gpu-check: there is no gpu-bundle/ (or it has no manifest.json): run `make "
            "gpu-bundle` on a machine where pip reaches the package index, and carry "
            "gpu-bundle/ with the working tree."
        )
    manifest = json.loads(MANIFEST.read_text())
    if manifest.get("fingerprint") != fingerprint():
        held, needed = set(manifest.get("requirements", [])), set(requirements())
        return 74, (
            f"gpu-check: gpu-bundle/ is stale: gathered at {manifest.get('tree') or '?'}, "
            f"it lacks {', '.join(sorted(needed - held)) or 'nothing'} that this tree needs "
            f"(constraints.txt, scripts/gpu_check.py) and holds "
            f"{', '.join(sorted(held - needed)) or 'nothing'} it no longer needs. Run "
            "`make gpu-bundle` again where pip reaches the package index, and carry the "
            "new gpu-bundle/."
        )
    if running not in manifest.get("pythons", []):
        return 2, (
            f"gpu-check: gpu-bundle/ holds wheels for Python {', '.join(manifest['pythons'])},"
            f" not for this Python {running}. Run it with one of those."
        )
    return 0, f"gathered at {manifest.get('tree') or '?'} on {manifest.get('gathered')}"


def install(env: dict) -> str:
    """Install the bundle's wheels this machine lacks into SITE, unpack MNIST; say what."""
    folder = WHEELS / f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted([*(WHEELS / "any").glob("*.whl"), *folder.glob("*.whl")])
    missing = [w for w in wheels if not installed(w.name.split("-")[0])]
    if missing:
        shutil.rmtree(SITE, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        target = ["--no-compile", "--target", str(SITE)]
        subprocess.run([*pip, *target, *map(str, missing)], check=True, env=env)
    if not (MNIST_RAW / "train-images-idx3-ubyte").is_file():
        MNIST_RAW.mkdir(parents=True, exist_ok=True)
        for packed in sorted((BUNDLE / "mnist").glob("*.gz")):
            with gzip.open(packed, "rb") as source, open(MNIST_RAW / packed.stem, "wb") as raw:
                shutil.copyfileobj(source, raw)
    names = ", ".join(w.name.split("-")[0] for w in missing) or "none"
    return f"installed {len(missing)} of {len(wheels)} wheels ({names}); MNIST in data/"


def installed(distribution: str) -> bool:
    """Whether this Python already has the distribution (a wheel name's first field)."""
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def environment() -> dict:
    """Every stage's environment: the bundle's site, then the tree's own package."""
    paths = [str(SITE), str(source_view()), os.environ.get("PYTHONPATH", "")]
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        OPTBENCH_DATA_DIR=str(ROOT / "data"),
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
    )


def source_view() -> Path:
    """The folder that holds the working tree's package as an install lays it out: links to
    src/optbench's files, and configs/ inside it as optbench.configs (pyproject.toml's
    package-dir); src/ alone lacks optbench.configs."""
    view = OUTPUT / "src"
    package = ROOT / "src" / "optbench"
    shutil.rmtree(view, ignore_errors=True)  # links only: their targets stay
    (view / "optbench").mkdir(parents=True)
    for entry in package.iterdir():
        if entry.name != "__pycache__":
            (view / "optbench" / entry.name).symlink_to(entry)
    if not (package / "configs").exists():
        (view / "optbench" / "configs").symlink_to(ROOT / "configs")
    return view


# ---------------------------------------------------------------------------------------
# The stages: each a function run in its own process (`gpu_check.py stage NAME`), which
# prints its summary line last; a failed check raises StageFailed.


def stage_stacked(device: str, sizes: dict) -> str:
    """Stacked vs run by run: ffnn after one step, LeNet after two."""
    from optbench.compose.jobs import compose_plan
    from optbench.training import loop

    shapes = {
        "ffnn": ("optimizers=[sgd,adam,rmsprop]", "train.steps=1"),
        "lenet": ("model=lenet", "optimizers=[sgd,adam]", "train.steps=2"),
    }
    lines, failed = [], False
    for model, overrides in shapes.items():
        common = (*overrides, f"device={device}", f"seeds={sizes['seeds']}", "train.eval_every=1")
        common += ("dataset.train_size=1000", *smaller(device, lenet=model == "lenet"))
        plans = [compose_plan("sweep", *common, f"stack_runs={m}") for m in ("always", "never")]
        stacked, alone = (loop.train(plan, progress=False) for plan in plans)
        n_test = plans[0].dataset["test_size"] or 10_000  # MNIST's test set
        relative = stacked[["optimizer"]].assign(worst=0.0)
        for column in ("train_loss", "last_batch_loss", "test_loss"):
            a, b = stacked[column].to_numpy(), alone[column].to_numpy()
            relative["worst"] = relative.worst.clip(lower=abs(a - b) / abs(b).clip(min=1e-12))
        by_optimizer = relative.groupby("optimizer", sort=False).worst.max()
        worst, tolerance = by_optimizer.max(), STACKED_RTOL[model, device]
        examples = round(abs(stacked.test_accuracy - alone.test_accuracy).max() * n_test)
        ok = worst <= tolerance and examples <= 2
        failed |= not ok
        each = ", ".join(f"{name} {value:.1e}" for name, value in by_optimizer.items())
        lines.append(
            f"{model} {len(stacked)} rows: losses within {worst:.1e} relative ({each}; "
            f"tolerance {tolerance:g}), accuracies within {examples} test "
            f"examples (tolerance 2){'' if ok else ' OUTSIDE'}"
        )
    if failed:
        raise StageFailed("; ".join(lines))
    return "; ".join(lines)


def lenet_job(device: str, sizes: dict) -> list[str]:
    """The stacked LeNet sweep the resume and determinism stage trains."""
    return [
        "sweep",
        "experiment=examples_cnn",
        "optimizers=[sgd,adam,asgd]",
        "seeds=2",
        f"device={device}",
        "stack_runs=always",
        f"dataset.train_size={sizes['train_size']}",
        f"train.steps={sizes['steps']}",
        f"train.eval_every={sizes['eval_every']}",
        *smaller(device),
    ]


def smaller(device: str, lenet: bool = True) -> tuple[str, ...]:
    """The overrides that make a plan of a device's check smaller (on the CPU); the model's
    only for the LeNet."""
    return tuple(o for o in SIZES[device]["smaller"] if lenet or not o.startswith("model."))


def optbench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "optbench.cli", *args]


def stage_lenet_resume(device: str, sizes: dict) -> str:
    """A stacked LeNet sweep twice (the same rows: deterministic) and once stopped with
    Ctrl-C after its second checkpoint and resumed (the same rows again)."""
    import pandas as pd

    job = lenet_job(device, sizes)
    folders = [OUTPUT / f"lenet_{name}" for name in ("first", "second", "resumed")]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    for folder in folders[:2]:
        run([*job, f"hydra.run.dir={folder}"])
    stop_after_checkpoints(optbench_command(*job, f"hydra.run.dir={folders[2]}"), folders[2])
    log = run([*job, f"hydra.run.dir={folders[2]}"])
    if "Resuming from" not in log:
        raise StageFailed("the stopped job did not resume from its checkpoint")
    first, second, resumed = (
        pd.read_csv(folder / "runs.csv").drop(columns="wall_s") for folder in folders
    )
    verdicts = [
        ("same seed twice", second),
        ("stopped and resumed", resumed),
    ]
    lines = []
    for what, other in verdicts:
        same = first.equals(other)
        lines.append(f"{what}: {'identical' if same else 'DIFFERENT'} ({len(first)} rows)")
    if not all(first.equals(other) for _, other in verdicts):
        raise StageFailed("; ".join(lines))
    return "; ".join(lines)


def run(args: list[str]) -> str:
    """Run `optbench ARGS`; its output (the job's log), or StageFailed with its error."""
    done = subprocess.run(optbench_command(*args), capture_output=True, text=True)
    if done.returncode != 0:
        raise StageFailed(f"optbench {args[0]} exited {done.returncode}: {done.stderr[-400:]}")
    return done.stdout + done.stderr


def stop_after_checkpoints(command: list[str], folder: Path) -> None:
    """Start the job, send it Ctrl-C once it has written its second checkpoint."""
    # its output to nowhere: a pipe nobody reads while this polls would fill and stop it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, seen = folder / "checkpoint.pt", set()
    while len(seen) < 2:
        if process.poll() is not None:
            raise StageFailed("the job ended before its second checkpoint: no stop to resume")
        if checkpoint.exists():
            seen.add(checkpoint.stat().st_mtime_ns)
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    if process.returncode != 130:
        raise StageFailed(f"Ctrl-C ended the job with exit code {process.returncode}, not 130")


def stage_sync(device: str, sizes: dict) -> str:
    """A short stacked sweep of the LeNet's optimizers under set_sync_debug_mode("warn"),
    trained twice, for n and 2n steps (one evaluation each, at the end): every line that
    synchronised, and how often in the longer one. A line that synchronised at least n
    times more in the longer one does so on every step, and fails; the others are paid once
    a job or once an evaluation (a model moved to the GPU, an optimizer's first step)."""
    import collections
    import warnings

    import torch

    from optbench.compose.jobs import compose_plan
    from optbench.training import loop

    if device != "cuda":
        return "skipped: synchronisation is a CUDA device's"
    steps = sizes["steps"]
    counts = []
    for length in (steps, 2 * steps):
        plan = compose_plan(
            "sweep",
            "experiment=examples_cnn",
            "seeds=2",
            "device=cuda",
            "dataset.train_size=2000",
            f"train.steps={length}",
            f"train.eval_every={2 * steps}",
        )
        torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loop.train(plan, progress=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(
            collections.Counter(
                f"{Path(w.filename).name}:{w.lineno}"
                for w in caught
                if "synchroniz" in str(w.message)
            )
        )
    shorter, longer = counts
    every_step = [site for site in longer if longer[site] - shorter[site] >= steps]
    peak = torch.cuda.max_memory_allocated() / 2**20
    line = (
        f"{sum(longer.values())} synchronisations in {2 * steps} steps of "
        f"{len(plan.optimizers)} optimizers x 2 seeds ({sum(shorter.values())} in {steps}), "
        f"at {dict(longer.most_common(8))}; peak memory {peak:.0f} MiB"
    )
    if every_step:
        raise StageFailed(f"{line}; EVERY STEP at {every_step}")
    return line


def stage_lenet_timing(device: str, sizes: dict) -> str:
    """The LeNet of examples_cnn, its 9 optimizers, stacked and run by run: time per
    run-step (one evaluation included) and peak memory."""
    import torch

    from optbench.compose.jobs import compose_plan
    from optbench.training import loop

    steps, parts = sizes["steps"], []
    for mode in ("always", "never"):
        plan = compose_plan(
            "sweep",
            "experiment=examples_cnn",
            f"seeds={sizes['seeds']}",
            f"device={device}",
            f"stack_runs={mode}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            *smaller(device),
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        loop.train(plan, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        runs = len(plan.runs)
        peak = (
            f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            if device == "cuda"
            else ""
        )
        name = "stacked" if mode == "always" else "run by run"
        parts.append(f"{name} {1000 * seconds / (runs * steps):.2f} ms per run-step{peak}")
    return f"{runs} runs x {steps} steps: " + "; ".join(parts)


def stage_sweeps(device: str, sizes: list) -> str:
    """`optbench sweep` timed end to end, results kept in gpu-check/."""
    import pandas as pd

    lines = []
    for overrides in sizes:
        name = "examples_cnn" if "experiment=examples_cnn" in overrides else "wizard_ffnn"
        folder = OUTPUT / name
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        small = smaller(device, lenet=name == "examples_cnn")
        run(
            [
                "sweep",
                *overrides,
                *small,
                f"device={device}",
                "resume=false",
                f"hydra.run.dir={folder}",
            ]
        )
        seconds = time.perf_counter() - start
        runs = pd.read_csv(folder / "runs.csv")
        final = runs[runs.step == runs.step.max()]
        lines.append(
            f"{name} {' '.join(overrides)}: {seconds:.1f} s, {len(final)} runs, mean final "
            f"test accuracy {final.test_accuracy.mean():.4f}"
        )
    return "; ".join(lines)


STAGES = {
    "stacked": stage_stacked,
    "lenet_resume": stage_lenet_resume,
    "sync": stage_sync,
    "lenet_timing": stage_lenet_timing,
    "sweeps": stage_sweeps,
}


def run_stage_here(name: str, device: str) -> int:
    """In a stage's own process: run it, print its line last (FAILED: ... when it fails)."""
    _, sizes = SIZES[device][name]
    try:
        print(STAGES[name](device, sizes))
        return 0
    except StageFailed as failed:
        print(f"FAILED: {failed}")
        return 1


# ---------------------------------------------------------------------------------------
# The check


def stage_process(name: str, command: list[str], limit: float, env: dict) -> tuple[bool, str]:
    """Run a stage's process within limit seconds: (passed, its summary line)."""
    log = OUTPUT / f"{name}.log"
    # its own process group: a stage out of time is ended with the jobs it started, which
    # would otherwise go on using the GPU during the next stages
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        log.write_text(stdout or "")
        return False, f"TIMED OUT after {limit:.0f} s (its output: {log.relative_to(ROOT)})"
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    log.write_text(done.stdout + "\n" + done.stderr)
    lines = done.stdout.strip().splitlines()
    last = lines[-1] if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]
    if done.returncode != 0 and not last.startswith("FAILED"):
        last = f"FAILED (exit {done.returncode}): {last}"
    return done.returncode == 0, last


def tests_line(passed: bool, line: str) -> tuple[bool, str]:
    """pytest's last line; a run that ran no test fails."""
    ran = any(word in line for word in (" passed", " failed", " error"))
    return passed and ran, line if ran else f"FAILED: ran no tests ({line})"


def check(device: str, budget: float) -> int:
    code, paragraph = check_python_and_bundle()
    if code:
        print(paragraph, file=sys.stderr)
        return code
    OUTPUT.mkdir(exist_ok=True)
    deadline = time.monotonic() + budget
    results: list[tuple[str, bool, str, float]] = []

    def guarded(name: str, action) -> None:
        """Run one stage; whatever happens, record its line and go on."""
        start = time.monotonic()
        try:
            passed, line = action()
        except Exception as error:  # the guard: one stage's fault never stops the check
            passed, line = False, f"FAILED ({type(error).__name__}: {error})"
        results.append((name, passed, line, time.monotonic() - start))

    def stage(name: str, command: list[str], env: dict, parse=None):
        limit = min(SIZES[device][name][0], deadline - time.monotonic())
        if limit < 10:
            return False, "SKIPPED: the check's time budget is spent"
        passed, line = stage_process(name, command, limit, env)
        return parse(passed, line) if parse else (passed, line)

    try:
        guarded("machine", lambda: machine(device, paragraph))
        env = environment()
        guarded("bundle", lambda: (True, install(env)))
        tests = [
            "tests/test_engine.py",
            "tests/test_reference.py",
            "tests/test_optimizers.py",
            "tests/test_loggers.py",
        ]
        selection = SIZES[device]["tests"][1]
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k"]
        guarded("tests", lambda: stage("tests", [*pytest, selection, *tests], env, tests_line))
        for name in STAGES:
            command = [sys.executable, __file__, "stage", name, "--device", device]
            guarded(name, lambda name=name, command=command: stage(name, command, env))
    finally:
        write_summary(results)
    return 0 if results and all(passed for _, passed, _, _ in results) else 1


def machine(device: str, bundle: str) -> tuple[bool, str]:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise StageFailed("PyTorch sees no CUDA device here; run the check where one is")
    name = torch.cuda.get_device_name() if device == "cuda" else "the CPU (--device cpu)"
    cuda = f", CUDA {torch.version.cuda}" if device == "cuda" else ""
    python = f"Python {sys.version.split()[0]}"
    return True, f"{name}, torch {torch.__version__}{cuda}, {python}; bundle {bundle}"


def write_summary(results: list) -> None:
    lines = ["== gpu-check summary =="]
    for name, passed, line, seconds in results:
        lines.append(f"{'ok  ' if passed else 'FAIL'} {name} ({seconds:.0f} s): {line}")
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    OUTPUT.mkdir(exist_ok=True)
    tmp = SUMMARY.with_name(f".{SUMMARY.name}.tmp")
    tmp.write_text(text)
    tmp.replace(SUMMARY)
    print(f"(written to {SUMMARY.relative_to(ROOT)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=["gather", "check", "stage"], default="check")
    parser.add_argument("name", nargs="?", help="the stage to run (action stage)")
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: simulate, small"
    )
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all stages")
    options = parser.parse_args()
    if options.action == "gather":
        gather()
        return 0
    if options.action == "stage":
        return run_stage_here(options.name, options.device)
    try:
        return check(options.device, options.budget)
    except KeyboardInterrupt:  # the summary of the stages done is already written
        return 130


if __name__ == "__main__":
    sys.exit(main())
