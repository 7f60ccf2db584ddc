"""Where the time of an `optbench sweep` goes, by py-spy's sampling of every process.

py-spy (a sampling profiler that reads native frames too: pip install py-spy) samples the
optbench process and its worker processes while the sweep runs, 25 times a second, only
while a thread is on a CPU (not waiting). Each sample is put in one part of the work by
its frames: the model's forward and backward pass (the matrix products in MKL's sgemm
apart from the rest), the optimizer update (and each optimizer's share of it), gathering
the batch, evaluation, the checkpoint, the step loop itself; in the job's process,
start-up (imports, composing and checking the config, loading the data), combining the
workers' rows and writing the checkpoint, and writing the results, statistics and plots.

    python scripts/where_time_goes.py                   # wizard_ffnn, 5 seeds, default layout
    python scripts/where_time_goes.py workers=threads   # the same in one process
    python scripts/where_time_goes.py experiment=examples_cnn seeds=2 train.steps=300

The arguments are the sweep's overrides (`experiment=wizard_ffnn seeds=5` unless given). Prints a
table of CPU seconds per part and process kind, and the sweep's wall time. scripts/bench.py
prints the same table for the default layout when py-spy is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RATE = 25  # samples a second: more slows the sweep itself (py-spy pauses it to read native frames)
OPTBENCH = str(Path(sys.executable).with_name("optbench"))

# The parts of a worker's (or, with workers=threads, a training thread's) step, by the
# innermost optbench frame of a sample: the first rule whose frame name matches wins.
TRAINING_PARTS = [
    ("evaluation", ("evaluation_rows", "Trainer.test", "RunTrainer.test", "evaluate (")),
    ("checkpoint state", ("to_bytes", "state_dict", "_Sink.evaluated")),
    ("optimizer update", ("OptimizerGroup.step", "torch/optim/", "pytorch_optimizer/")),
    ("batch gathering", ("Batches.examples", "next_batch")),
    ("forward and backward", ("ffnn_loss_and_grads", "forward (", "closure", "models.py")),
]
# The parts of the job's own process, by any frame of a sample.
JOB_PARTS = [
    ("start-up: imports", ("_find_and_load",)),
    ("start-up: loading the data", ("in_memory.py",)),
    ("combining rows and writing the checkpoint", ("_Gathered", "checkpoints.py")),
    ("results, statistics and plots", ("write_results", "write_analysis", "report/")),
    ("start-up: config, checks, plan", ("hydra/", "compose/", "omegaconf/")),
]
MATMUL = ("gemm", "dnnl", "mkldnn", "conv")  # a native leaf frame of a matrix product
# A frame in an optimizer's own module (torch/optim/adadelta.py, pytorch_optimizer's
# .../soap.py), not in the base class or helpers every optimizer shares.
OPTIMIZER_MODULE = re.compile(r"\((?:torch/optim|pytorch_optimizer(?:/\w+)*)/(\w+)\.py:")
SHARED_MODULES = {"optimizer", "__init__", "_functional", "utils", "base", "agc", "gc"}
SHARED = "code they share (Optimizer.step, ...)"


def part_of(frames: list[str], in_worker: bool) -> str:
    """The part of the work a sample's frames (outermost first) belong to; a worker
    process's frames begin with those of the job's process that forked it."""
    # the step loop, or a worker thread's share of it (workers=threads)
    training = any(key in f for f in frames for key in ("step_loop (optbench", "Workers.map"))
    if training or in_worker:
        ours = [f for f in frames if "(optbench/" in f or "torch/optim/" in f]
        inner = ours[-1] if ours else ""
        for name, keys in TRAINING_PARTS:
            if any(key in inner for key in keys):
                if name == "forward and backward":
                    leaf = frames[-1]
                    kind = "matrix products" if any(m in leaf for m in MATMUL) else "the rest"
                    return f"{name}: {kind}"
                return name
        return "step loop and bookkeeping"
    for name, keys in JOB_PARTS:
        if any(key in frame for frame in frames for key in keys):
            return name
    return "other"


def optimizer_of(frames: list[str]) -> str:
    """The optimizer whose update a sample of the "optimizer update" part is in: the module
    of its innermost frame in an optimizer's own code (adadelta, adam, soap, ...), else the
    code they all share."""
    for frame in reversed(frames):
        match = OPTIMIZER_MODULE.search(frame)
        if match and match.group(1) not in SHARED_MODULES:
            return match.group(1)
    return SHARED


def profile(overrides: list[str]) -> tuple[Counter, Counter, float, Counter]:
    """Run the sweep under py-spy; CPU seconds by part in the worker processes (or
    training threads) and in the job's process, the wall time, and the update's CPU
    seconds by optimizer."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    folder = Path(tempfile.mkdtemp(prefix="optbench_profile_"))
    raw = folder / "samples.txt"
    given = {override.split("=")[0] for override in overrides}
    defaults = [d for d in ("experiment=wizard_ffnn", "seeds=5") if d.split("=")[0] not in given]
    command = [OPTBENCH, "sweep", *defaults, *overrides]
    start = time.perf_counter()
    done = subprocess.run(
        [spy, "record", "--native", "--subprocesses", "-r", str(RATE), "-f", "raw"]
        + ["-o", str(raw), "--", *command, f"hydra.run.dir={folder / 'out'}"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0 or not raw.is_file():
        sys.exit(f"py-spy or optbench failed:\n{done.stderr[-3000:]}")
    workers, job, updates = Counter(), Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        in_worker = any(f.startswith("_work (optbench/training/workers.py") for f in frames)
        part = part_of(frames, in_worker)
        counter = workers if in_worker or part in _TRAINING_NAMES else job
        counter[part] += int(count) / RATE
        if part == "optimizer update":
            updates[optimizer_of(frames)] += int(count) / RATE
    shutil.rmtree(folder)
    return workers, job, wall, updates


_TRAINING_NAMES = {name for name, _ in TRAINING_PARTS} | {"step loop and bookkeeping"}
_TRAINING_NAMES |= {f"forward and backward: {kind}" for kind in ("matrix products", "the rest")}


def table(workers: Counter, job: Counter, wall: float, updates: Counter) -> list[str]:
    """The breakdown as lines: CPU seconds and share of each part, and each optimizer's
    share of the update."""
    lines = [f"wall time {wall:.1f} s (under py-spy); CPU seconds sampled by part:"]
    for title, counter in (
        ("training (worker processes or threads)", workers),
        ("job process", job),
    ):
        total = sum(counter.values())
        lines.append(f"  {title}: {total:.1f} s")
        for part, seconds in counter.most_common():
            lines.append(f"    {part:<45} {seconds:7.1f} s  {seconds / total:6.1%}")
            if part == "optimizer update":  # then each optimizer's share of it
                for name, of_it in updates.most_common():
                    lines.append(f"      {name:<43} {of_it:7.1f} s")
    return lines


def main() -> None:
    print("\n".join(table(*profile(sys.argv[1:]))))


if __name__ == "__main__":
    main()
