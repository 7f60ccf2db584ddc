"""Time optbench against the classic tutorial loop, in one run on one machine.

Prints:
- the tutorial loop's time per run: the wizard_ffnn tutorial's own code (torchvision's
  MNIST with ToTensor, a DataLoader with batch 100, Linear(784, 100) -> ReLU ->
  Linear(100, 10), SGD lr=0.1, 3000 iterations, test accuracy every 500) for one seed;
- `optbench run optimizer=sgd` with 1 and with 5 seeds, as a user types it (start-up,
  data loading, evaluation, CSVs and plots included);
- the full wizard_ffnn sweep (8 optimizers x 5 seeds, `optbench sweep`) in each CPU
  layout: one process with 2 threads, one process with 1 thread, and two processes of
  1 thread (one per core) that each train half of the optimizers;
- per layout: the wall time, the ratio of the tutorial's time per run to the sweep's
  time per run, and the peak resident memory of the optbench process;
- the floor: the sweep's matrix-multiply FLOPs (training and evaluation) divided by the
  machine's measured float32 matmul throughput.

    python scripts/bench.py              # about 6 minutes on a 2-core machine
    python scripts/bench.py --quick      # skips the 1-seed run and the 1-thread layouts
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torchvision
from torch import nn

from optbench.data import default_data_dir, prepare

OPTBENCH = str(Path(sys.executable).with_name("optbench"))
WIZARD_OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "adagrad", "adadelta", "adamax"]
WIZARD_OPTIMIZERS += ["rmsprop"]


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
    """Measured float32 matmul throughput: the best of a few 2048^3 products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def sweep_flops(runs: int, hidden: int = 100, inputs: int = 784, classes: int = 10) -> float:
    """Matrix-multiply FLOPs of the wizard_ffnn sweep: per training example a forward pass
    (2 x weights), the weight gradients (2 x weights) and the hidden layer's input gradient
    (2 x fc2's weights); per test example at each of the 6 evaluations a forward pass."""
    weights = inputs * hidden + hidden * classes
    train = 3000 * 100 * (2 * weights + 2 * weights + 2 * hidden * classes)
    test = 6 * 10000 * 2 * weights
    return runs * (train + test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the main figures only")
    options = parser.parse_args()
    data_dir = default_data_dir()
    prepare("mnist", data_dir)
    common = ["experiment=wizard_ffnn", f"data_dir={data_dir}"]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")

    tutorial_s, tutorial_acc = tutorial_loop(data_dir, seed=0)
    print(f"tutorial loop, sgd, 1 seed: {tutorial_s:.1f} s (final accuracy {tutorial_acc:.2f}%)")

    for seeds in (1, 5) if not options.quick else (5,):
        wall, _, dirs = run_optbench([["run", *common, "optimizer=sgd", f"seeds={seeds}"]])
        per_run = wall / seeds
        print(
            f"optbench run optimizer=sgd seeds={seeds}: {wall:.1f} s, {per_run:.1f} s per run, "
            f"ratio {tutorial_s / per_run:.1f}x (mean final accuracy {final_accuracy(dirs):.2f}%)"
        )

    sweep = ["sweep", *common, "seeds=5"]
    halves = [WIZARD_OPTIMIZERS[::2], WIZARD_OPTIMIZERS[1::2]]
    layouts = {"1 process x 2 threads": [[*sweep, "threads=2"]]}
    if not options.quick:
        layouts["1 process x 1 thread"] = [[*sweep, "threads=1"]]
        layouts["2 processes x 1 thread"] = [
            [*sweep, "threads=1", f"optimizers=[{','.join(half)}]"] for half in halves
        ]
    n_runs = len(WIZARD_OPTIMIZERS) * 5
    for layout, commands in layouts.items():
        wall, peak_gb, dirs = run_optbench(commands)
        per_run = wall / n_runs
        print(
            f"optbench sweep, wizard_ffnn, 8 optimizers x 5 seeds, {layout}: {wall:.1f} s, "
            f"{per_run:.2f} s per run, ratio {tutorial_s / per_run:.1f}x, peak RSS "
            f"{peak_gb:.2f} GB (mean final accuracy {final_accuracy(dirs):.2f}%)"
        )
        for directory in dirs:
            shutil.rmtree(directory)

    flops = sweep_flops(n_runs)
    for threads in (1, 2):
        rate = matmul_flops_per_second(threads)
        print(
            f"floor with {threads} thread(s): {flops / 1e12:.2f} TFLOP / "
            f"{rate / 1e9:.0f} GFLOP/s (2048^3 float32 matmul) = {flops / rate:.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
