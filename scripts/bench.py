"""How close optbench comes to what the machine allows, measured in one run.

Prints first the fractions of the floor it reaches and the start-up:

    floor fraction, ffnn sweep: F
    floor fraction, lenet step: F
    start-up: S s

and then the measurements behind them (progress goes to stderr meanwhile):
- the tutorial loop's time per run: the wizard_ffnn tutorial's own code (torchvision's
  MNIST with ToTensor, a DataLoader with batch 100, Linear(784, 100) -> ReLU ->
  Linear(100, 10), SGD lr=0.1, 3000 iterations, test accuracy every 500) for one seed;
- `optbench run optimizer=sgd` with 1 and with 5 seeds, as a user types it (start-up,
  data loading, evaluation, CSVs and plots included);
- the full wizard_ffnn sweep (8 optimizers x 5 seeds, `optbench sweep`) in each CPU
  layout: the runs dealt to 2 worker processes (the default), one process with 2 worker
  threads, one process with 1 thread, and two `optbench sweep` processes of 1 thread that
  each train half of the optimizers; per layout, the wall time and the peak resident
  memory of the optbench process (not counting its worker processes);
- the ffnn sweep's floor: its matrix-multiply FLOPs (training and evaluation) divided by
  the machine's measured float32 matmul throughput with 2 threads, at its best (2048^3)
  and at the sweep's own shapes; plus the memory traffic of the optimizer updates (each
  parameter, gradient and optimizer state read and written once per step) divided by the
  measured memory bandwidth. Their sum bounds training and evaluation from below;
- the LeNet's step: the examples_cnn protocol's time per run-step as `optbench sweep`
  trains it (sweeps of all its optimizers with 2 seeds, one 200 steps longer than the
  other: the difference is training alone, start-up, costs, evaluation and plots cancel)
  against the step's arithmetic: each of its convolutions and matrix products (forward,
  input gradient, weight gradient) timed at its own shape, one thread per core as the
  engine runs them;
- torch.compile (Inductor) of each model's step against eager (and, for the ffnn, against
  the forward and backward pass optbench writes out), with Inductor's on-disk cache empty
  and then warm;
- the start-up: from process start to the first evaluation of a one-step `optbench run`
  (its log line), and what importing torch and torch._dynamo takes alone (torch.optim's
  optimizers import torch._dynamo when they are built);
- last, where the time of the ffnn sweep goes: one more sweep under py-spy, its CPU time
  by part of the work (scripts/where_time_goes.py).

Each is timed --repeats times (2), in passes over the list: on a shared machine another
tenant's load can slow any one timing, so the fastest of each counts.

    python scripts/bench.py              # about 16 minutes on a 2-core machine
    python scripts/bench.py --quick      # skips the 1-seed run and the 1-thread layouts
    python scripts/bench.py --repeats 1  # each timed once
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torchvision
from torch import nn

from optbench.compose.jobs import compose_plan
from optbench.data.prepare import default_data_dir, prepare
from optbench.models import FFNN, LeNet, ffnn_loss_and_grads
from optbench.optimizers.build import build_optimizer
from optbench.plan import OptimizerSpec

OPTBENCH = str(Path(sys.executable).with_name("optbench"))


class FeedforwardNeuralNetModel(nn.Module):  # the tutorial's model, verbatim in spirit
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def tutorial_loop(data_dir: Path, seed: int = 0) -> tuple[float, float]:
    """The tutorial's training loop; returns (seconds, final test accuracy in %)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    transform = torchvision.transforms.ToTensor()
    train_dataset = torchvision.datasets.MNIST(str(data_dir), train=True, transform=transform)
    test_dataset = torchvision.datasets.MNIST(str(data_dir), train=False, transform=transform)
    batch_size, n_iters = 100, 3000
    num_epochs = int(n_iters / (len(train_dataset) / batch_size))
    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=batch_size, shuffle=False)
    model = FeedforwardNeuralNetModel(28 * 28, 100, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    iteration, accuracy = 0, 0.0
    for _ in range(num_epochs):
        for images, labels in train_loader:
            images = images.view(-1, 28 * 28).requires_grad_()
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            iteration += 1
            if iteration % 500 == 0:
                correct, total = 0, 0
                for test_images, test_labels in test_loader:
                    outputs = model(test_images.view(-1, 28 * 28).requires_grad_())
                    _, predicted = torch.max(outputs.data, 1)
                    total += test_labels.size(0)
                    correct += (predicted == test_labels).sum().item()
                accuracy = 100 * correct / total
    return time.perf_counter() - start, accuracy


def run_optbench(commands: list[list[str]]) -> tuple[float, float, list[Path]]:
    """Run optbench commands concurrently (each with hydra.run.dir in a fresh directory);
    returns (wall seconds until the last ends, the largest peak RSS in GB, their output dirs)."""
    out_dirs = [Path(tempfile.mkdtemp(prefix="optbench_bench_")) for _ in commands]
    logs = [tempfile.TemporaryFile() for _ in commands]
    start = time.perf_counter()
    processes = [
        subprocess.Popen([OPTBENCH, *command, f"hydra.run.dir={out_dir}"], stdout=log, stderr=log)
        for command, out_dir, log in zip(commands, out_dirs, logs, strict=True)
    ]
    peak_kb = 0
    for process, log in zip(processes, logs, strict=True):
        _, status, usage = os.wait4(process.pid, 0)  # usage: of this process alone
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            sys.exit(f"optbench failed: {process.args}\n{log.read().decode()[-3000:]}")
        peak_kb = max(peak_kb, usage.ru_maxrss)  # kilobytes on Linux
    return time.perf_counter() - start, peak_kb / 1e6, out_dirs


def final_accuracy(out_dirs: list[Path]) -> float:
    runs = pd.concat([pd.read_csv(d / "runs.csv") for d in out_dirs])
    return 100 * float(runs[runs.step == runs.step.max()].test_accuracy.mean())


def matmul_flops_per_second(threads: int) -> float:
    """Measured float32 matmul throughput: a 2048^3 product, the fastest of 3 seconds."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / _best_time(lambda: a @ b)


def sweep_matmul_flops_per_second(threads: int, runs: int) -> float:
    """Measured throughput at the sweep's own shapes: the first layer's forward product of
    every run at once, [runs, 100, 784] @ [runs, 784, 100]."""
    torch.set_num_threads(threads)
    x, w = torch.rand(runs, 100, 784), torch.rand(runs, 100, 784).transpose(1, 2)
    return runs * 2 * 100 * 784 * 100 / _best_time(lambda: torch.bmm(x, w))


def memory_bytes_per_second(threads: int) -> float:
    """Measured memory bandwidth: bytes read and written by a copy of 256 MB (far larger
    than any cache)."""
    torch.set_num_threads(threads)
    source, target = torch.rand(2**26), torch.empty(2**26)
    return 2 * source.nbytes / _best_time(lambda: target.copy_(source))


def wizard_optimizers() -> list[OptimizerSpec]:
    """The optimizer settings `optbench sweep experiment=wizard_ffnn` trains."""
    return compose_plan("sweep", "experiment=wizard_ffnn").optimizers


def optimizer_traffic_bytes(specs: list[OptimizerSpec], seeds: int) -> float:
    """Bytes the wizard_ffnn sweep's optimizer updates must move at least: per step, each
    run's parameters and gradients read, its parameters written, and each of its optimizer's
    parameter-sized states (momentum, moments...) read and written; float32 throughout. The
    states are counted on torch.optim itself, after a step of each configured optimizer."""
    passes = 0
    for spec in specs:
        p = torch.zeros(16, requires_grad=True)
        p.grad = torch.ones(16)
        optimizer = build_optimizer(spec.config, [p])
        optimizer.step()
        states = sum(torch.is_tensor(v) and v.shape == p.shape for v in optimizer.state[p].values())
        passes += 3 + 2 * states
    params = sum(p.numel() for p in FeedforwardNeuralNetModel(28 * 28, 100, 10).parameters())
    return 3000 * seeds * params * 4 * passes


def _best_time(function, seconds: float = 3.0) -> float:
    """The fastest of as many calls as fit in `seconds` (after a first, warm-up call): on a
    shared machine, the closest to what the hardware does when nothing else runs."""
    function()
    best, end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def sweep_flops(runs: int, hidden: int = 100, inputs: int = 784, classes: int = 10) -> float:
    """Matrix-multiply FLOPs of the wizard_ffnn sweep: per training example a forward pass
    (2 x weights), the weight gradients (2 x weights) and the hidden layer's input gradient
    (2 x fc2's weights); per test example at each of the 6 evaluations a forward pass."""
    weights = inputs * hidden + hidden * classes
    train = 3000 * 100 * (2 * weights + 2 * weights + 2 * hidden * classes)
    test = 6 * 10000 * 2 * weights
    return runs * (train + test)


def lenet_kernels(batch: int = 64) -> list[tuple[str, float, dict]]:
    """The arithmetic of one training step of the examples_cnn LeNet (MNIST, batch 64):
    (name, FLOPs, {layout: the kernel call}) for each convolution's forward, input gradient
    (not the first layer's: the images need none) and weight gradient, and each linear
    layer's three matrix products. Shapes come from the model itself; each call is a
    functools.partial of the torch function with its tensors."""
    model, shapes = LeNet((1, 28, 28), 10), {}
    for name, layer in model.named_children():
        layer.register_forward_hook(lambda m, i, o, name=name: shapes.update({name: i[0].shape}))
    model(torch.zeros(batch, 1, 28, 28))
    kernels = []
    for name, layer in model.named_children():
        x, w = torch.rand(shapes[name]), layer.weight.detach()
        if isinstance(layer, nn.Conv2d):
            out = nn.functional.conv2d(x, w)
            flops = 2 * out.numel() * w[0].numel()
            first = name == "conv1"
            forward, backward = {}, {}
            for layout in (torch.contiguous_format, torch.channels_last):
                xl, wl = x.contiguous(memory_format=layout), w.contiguous(memory_format=layout)
                gl = torch.rand_like(out).contiguous(memory_format=layout)
                forward[str(layout)] = partial(nn.functional.conv2d, xl, wl)
                backward[str(layout)] = partial(
                    torch.ops.aten.convolution_backward,
                    *(gl, xl, wl, [len(wl)], [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
                    [not first, True, True],  # which gradients: input, weight, bias
                )
            kernels.append((f"{name} forward", flops, forward))
            passes = "weight gradient" if first else "input and weight gradients"
            kernels.append((f"{name} {passes}", flops * (1 if first else 2), backward))
        else:
            x, g, b = x.flatten(1), torch.rand(batch, layer.out_features), layer.bias.detach()
            flops = 2 * batch * layer.in_features * layer.out_features
            products = {
                "forward": partial(torch.addmm, b, x, w.t()),
                "weight gradient": partial(torch.mm, g.t(), x),
                "input gradient": partial(torch.mm, g, w),
            }
            kernels += [(f"{name} {k}", flops, {"": f}) for k, f in products.items()]
    return kernels


def lenet_arithmetic_seconds(threads: int) -> tuple[float, float, list[str]]:
    """Seconds of arithmetic per LeNet training step of one run, with `threads` runs side
    by side (each kernel timed on one thread while the other threads run it too, the
    engine's layout), in the faster memory layout of each kernel; with its FLOPs and a line
    per kernel."""
    seconds, flops, lines = 0.0, 0.0, []
    for name, kernel_flops, calls in lenet_kernels():
        best = min(_best_time_on_threads(call, threads) for call in calls.values())
        seconds, flops = seconds + best, flops + kernel_flops
        lines.append(f"  {name}: {kernel_flops / 1e6:.0f} MFLOP in {best * 1e3:.2f} ms")
    return seconds, flops, lines


def _best_time_on_threads(function, threads: int, calls: int = 10, rounds: int = 8) -> float:
    """Seconds per call of `function` on one thread while `threads` threads each call it
    `calls` times at once; the fastest of `rounds` rounds."""

    def on_one_thread(_) -> None:
        torch.set_num_threads(1)
        for _ in range(calls):
            function()

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(on_one_thread, range(threads)))  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            list(pool.map(on_one_thread, range(threads)))
            best = min(best, (time.perf_counter() - start) / calls)
    return best


def lenet_run_step_seconds(data_dir: Path, repeats: int) -> tuple[float, int, list[str]]:
    """Seconds per run-step of the examples_cnn protocol as `optbench sweep` trains it:
    sweeps of all its optimizers with 2 seeds, `short` and `short + 200` steps, each
    evaluated once at its end; the difference of their fastest wall times is the 200
    extra steps of every run, the rest (start-up, costs, evaluation, plots) cancelling.
    Also the runs per sweep and a line per sweep."""
    short, extra, lines = 50, 200, []
    fastest = {short: math.inf, short + extra: math.inf}
    common = ["sweep", "experiment=examples_cnn", "seeds=2", f"data_dir={data_dir}"]
    for attempt in range(1, repeats + 1):
        for steps in fastest:
            command = [*common, f"train.steps={steps}", f"train.eval_every={steps}"]
            wall, _, dirs = run_optbench([command])
            fastest[steps] = min(fastest[steps], wall)
            runs = len(pd.read_csv(dirs[0] / "runs.csv"))
            shutil.rmtree(dirs[0])
            lines.append(
                f"[{attempt}] examples_cnn sweep, {runs} runs x {steps} steps: {wall:.1f} s"
            )
            _progress(lines[-1])
    return (fastest[short + extra] - fastest[short]) / (runs * extra), runs, lines


# The engine's log line after the first evaluation of a one-step run (without a terminal):
# [2026-11-24 20:02:12,900][optbench][INFO] - step 1/1: mean test accuracy 0.3305 over 1 run
EVALUATED = "step 1/1: mean test accuracy"
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def startup_seconds(data_dir: Path) -> float:
    """From process start to the end of a one-step `optbench run` of the default
    experiment (the same start-up), by the time stamp of the engine's log line after its
    evaluation: the start-up, one training step and one evaluation (a few milliseconds for
    the ffnn)."""
    out_dir = Path(tempfile.mkdtemp(prefix="optbench_bench_"))
    command = [OPTBENCH, "run", f"data_dir={data_dir}", f"hydra.run.dir={out_dir}"]
    start = time.time()
    process = subprocess.run(
        [*command, "train.steps=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(out_dir)
    if process.returncode != 0:
        sys.exit(f"optbench run failed:\n{process.stderr[-3000:]}")
    return started_at(process.stdout + process.stderr) - start


def started_at(log: str) -> float:
    """The time (seconds since the epoch, local time) of the engine's line after the first
    evaluation of a one-step run, in a log written with Hydra's default format."""
    for line in log.splitlines():
        if EVALUATED in line and (match := STAMP.match(line)):
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    sys.exit(f"no time-stamped {EVALUATED!r} line in optbench's log (Hydra's default format)")


def torch_import_seconds() -> float:
    """Wall time of a Python process that imports torch and torch._dynamo and exits."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torch._dynamo"], check=True)
    return time.perf_counter() - start


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the main figures only")
    parser.add_argument(
        "--repeats", type=int, default=2, help="times each is timed; the fastest counts"
    )
    options = parser.parse_args()
    if options.repeats < 1:
        parser.error(f"--repeats {options.repeats}: give 1 or more")
    cores = torch.get_num_threads()  # torch's default: the engine's worker threads
    data_dir = default_data_dir()
    prepare("mnist", data_dir, log=_progress)
    details = [f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}"]
    sweep_s, ffnn_floor_s = ffnn_sweep(data_dir, options, details)
    step_s, lenet_floor_s = lenet_step(data_dir, options.repeats, cores, details)
    startup_s = min(startup_seconds(data_dir) for _ in range(options.repeats))
    imports_s = min(torch_import_seconds() for _ in range(options.repeats))
    details.append(
        f"start-up of `optbench run`, fastest of {options.repeats}: {startup_s:.2f} s, of "
        f"which a process that imports torch and torch._dynamo alone takes {imports_s:.2f} s"
    )
    print(f"floor fraction, ffnn sweep: {ffnn_floor_s / sweep_s:.2f}")
    print(f"floor fraction, lenet step: {lenet_floor_s / step_s:.2f}")
    print(f"start-up: {startup_s:.2f} s")
    print("\n".join(details))
    print("where the time of the ffnn sweep goes (scripts/where_time_goes.py):")
    print("\n".join(where_time_goes()))


def where_time_goes() -> list[str]:
    """The wizard_ffnn sweep's breakdown by part, sampled by py-spy (one more sweep, run
    under the profiler); a line saying why not where py-spy cannot run."""
    sys.path.insert(0, str(Path(__file__).parent))
    import where_time_goes as breakdown

    try:
        return breakdown.table(*breakdown.profile([]))
    except SystemExit as failed:  # py-spy missing, or not allowed to read other processes
        return [f"  not measured: {failed}"]


WORKER_PROCESSES = "2 worker processes"  # the engine's default layout on 2 cores


def ffnn_sweep(data_dir: Path, options, details: list[str]) -> tuple[float, float]:
    """The tutorial loop, `optbench run` and the wizard_ffnn sweep in each layout, timed.
    Returns the whole sweep's fastest wall time (in 2 worker processes, the default) and
    its floor, in seconds."""
    common = ["experiment=wizard_ffnn", f"data_dir={data_dir}"]
    jobs = {}  # label: (runs, the optbench commands that run at once)
    for seeds in (1, 5) if not options.quick else (5,):
        jobs[f"optbench run optimizer=sgd seeds={seeds}"] = (
            seeds,
            [["run", *common, "optimizer=sgd", f"seeds={seeds}"]],
        )
    specs, sweep_seeds = wizard_optimizers(), 5
    names = [spec.name for spec in specs]
    sweep = ["sweep", *common, f"seeds={sweep_seeds}"]
    halves = [names[::2], names[1::2]]
    layouts = {  # threads=2: two workers, processes unless workers=threads
        WORKER_PROCESSES: [[*sweep, "threads=2"]],
        "1 process x 2 threads": [[*sweep, "threads=2", "workers=threads"]],
    }
    if not options.quick:
        layouts["1 process x 1 thread"] = [[*sweep, "threads=1"]]
        layouts["2 processes x 1 thread"] = [
            [*sweep, "threads=1", f"optimizers=[{','.join(half)}]"] for half in halves
        ]
    n_runs = len(names) * sweep_seeds
    sweep_label = f"optbench sweep, wizard_ffnn, {len(names)} optimizers x {sweep_seeds} seeds"
    for layout, commands in layouts.items():
        jobs[f"{sweep_label}, {layout}"] = (n_runs, commands)

    tutorial = "tutorial loop, sgd, 1 seed"
    fastest = {tutorial: math.inf} | {label: math.inf for label in jobs}  # seconds per run
    for attempt in range(1, options.repeats + 1):
        seconds, accuracy = tutorial_loop(data_dir, seed=0)
        fastest[tutorial] = min(fastest[tutorial], seconds)
        _progress(f"[{attempt}] {tutorial}: {seconds:.1f} s (final accuracy {accuracy:.2f}%)")
        for label, (runs, commands) in jobs.items():
            wall, peak_gb, dirs = run_optbench(commands)
            fastest[label] = min(fastest[label], wall / runs)
            _progress(
                f"[{attempt}] {label}: {wall:.1f} s, {wall / runs:.2f} s per run, peak RSS "
                f"{peak_gb:.2f} GB (mean final accuracy {final_accuracy(dirs):.2f}%)"
            )
            for directory in dirs:
                shutil.rmtree(directory)
    tutorial_s = fastest.pop(tutorial)
    details.append(f"fastest of {options.repeats}: {tutorial} {tutorial_s:.1f} s; per run / ratio:")
    for label, per_run in fastest.items():
        details.append(f"  {label}: {per_run:.2f} s / {tutorial_s / per_run:.1f}x")
    floor = ffnn_floor(specs, sweep_seeds, details)
    sweep_s = fastest[f"{sweep_label}, {WORKER_PROCESSES}"] * n_runs
    details.append(
        f"ffnn sweep: floor of the matmuls and optimizer updates (the two above) {floor:.1f} s "
        f"/ the whole process {sweep_s:.1f} s; a ratio to the tutorial loop of at most "
        f"{tutorial_s / (floor / n_runs):.0f}x even with no start-up, evaluation or plots"
    )
    details += compile_probe_lines("ffnn")
    return sweep_s, floor


def ffnn_floor(specs: list[OptimizerSpec], seeds: int, details: list[str]) -> float:
    """Seconds the wizard_ffnn sweep cannot go below with 2 threads (its layout above): its
    matmuls at their own shapes, and its optimizer updates' least memory traffic."""
    n_runs = len(specs) * seeds
    flops = sweep_flops(n_runs)
    for threads in (1, 2):
        rate = matmul_flops_per_second(threads)
        details.append(
            f"floor with {threads} thread(s): {flops / 1e12:.2f} TFLOP / "
            f"{rate / 1e9:.0f} GFLOP/s (2048^3 float32 matmul) = {flops / rate:.1f} s"
        )
    rate = sweep_matmul_flops_per_second(2, n_runs)
    matmul_s = flops / rate
    details.append(
        f"with 2 threads at the sweep's own shapes ({n_runs} x [100,784] @ [784,100]): "
        f"{flops / 1e12:.2f} TFLOP / {rate / 1e9:.0f} GFLOP/s = {matmul_s:.1f} s"
    )
    traffic = optimizer_traffic_bytes(specs, seeds)
    bandwidth = memory_bytes_per_second(2)
    traffic_s = traffic / bandwidth
    details.append(
        f"optimizer updates, 2 threads: {traffic / 1e9:.0f} GB read and written at least / "
        f"{bandwidth / 1e9:.1f} GB/s (256 MB copy) = {traffic_s:.1f} s"
    )
    return matmul_s + traffic_s


def lenet_step(data_dir: Path, repeats: int, cores: int, details: list[str]) -> tuple:
    """The examples_cnn LeNet's time per run-step and the floor of its arithmetic per
    run-step with one run on each of `cores` worker threads, in seconds."""
    step_s, runs, lines = lenet_run_step_seconds(data_dir, repeats)
    arithmetic_s, flops, kernels = lenet_arithmetic_seconds(cores)
    floor = arithmetic_s / cores
    details += lines
    details.append(
        f"lenet step: {flops / 1e9:.2f} GFLOP of convolutions and matrix products per step, "
        f"{arithmetic_s * 1e3:.2f} ms on one thread with {cores} runs side by side "
        f"({flops / arithmetic_s / 1e9:.0f} GFLOP/s), so {floor * 1e3:.2f} ms per run-step; "
        f"`optbench sweep` takes {step_s * 1e3:.2f} ms per run-step ({runs} runs)"
    )
    details += kernels
    at_peak = flops / matmul_flops_per_second(1) / cores
    details.append(
        f"  (at the 2048^3 matmul rate of one thread instead: {at_peak * 1e3:.2f} ms per "
        f"run-step, a floor fraction of {at_peak / step_s:.2f})"
    )
    details += compile_probe_lines("lenet")
    return step_s, floor


def compile_probe_lines(name: str) -> list[str]:
    """compile_probe of model `name` in a fresh process, twice: with Inductor's on-disk
    cache empty, then warm."""
    lines = []
    with tempfile.TemporaryDirectory(prefix="optbench_inductor_") as cache:
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache}
        for cache_state in ("empty", "warm"):
            probe = [sys.executable, __file__, "--compile-probe", name]
            done = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lines.append(f"  the {name} compile probe failed:\n{done.stderr[-2000:]}")
                break
            lines.append(f"  {done.stdout.strip()} (Inductor's cache {cache_state})")
    return lines


def compile_probe(name: str) -> str:
    """torch.compile (Inductor) of a model's forward, trained a step at a time on one
    thread as a run trains, against eager autograd: the first call's time (compiling) and
    then the time per step. `lenet`: the examples_cnn LeNet, batch 64, channels-last;
    `ffnn`: the wizard_ffnn net, batch 100, also against the forward and backward pass
    that optbench writes out for it (models.ffnn_loss_and_grads, what the engine runs)."""
    torch.set_num_threads(1)
    if name == "lenet":
        model = LeNet((1, 28, 28), 10).to(memory_format=torch.channels_last)
        x = torch.rand(64, 1, 28, 28)
    elif name == "ffnn":
        model = FFNN((1, 28, 28), 10)
        x = torch.rand(100, 1, 28, 28)
    else:
        raise ValueError(f"compile_probe: no model {name!r}; lenet or ffnn")
    y = torch.randint(0, 10, (len(x),))

    def step(forward) -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()

    eager_s = _best_time(lambda: step(model))
    line = f"{name} step on one thread: eager {eager_s * 1e3:.2f} ms"
    if name == "ffnn":
        written_s = _best_time(lambda: ffnn_loss_and_grads(model, x, y))
        line += f"; optbench's written-out pass {written_s * 1e3:.2f} ms"
    compiled = torch.compile(model)
    start = time.perf_counter()
    try:
        step(compiled)
    except Exception as error:  # no C compiler, or a model Inductor cannot compile
        return f"{line}; torch.compile failed ({type(error).__name__}): eager only"
    first_s = time.perf_counter() - start
    compiled_s = _best_time(lambda: step(compiled))
    return (
        f"{line}; torch.compile (Inductor) {compiled_s * 1e3:.2f} ms after a first call of "
        f"{first_s:.1f} s"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--compile-probe":  # compile_probe_lines'
        print(compile_probe(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
