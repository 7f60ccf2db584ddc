"""Time the classic tutorial training loop against `optbench run` on the same protocol.

The tutorial loop is the wizard_ffnn tutorial's own code: torchvision's MNIST with
ToTensor, a DataLoader (batch 100, shuffled), Linear(784, 100) -> ReLU -> Linear(100, 10),
SGD lr=0.1, 3000 iterations, test accuracy every 500 iterations through a DataLoader.
optbench runs the same protocol as a user would, `optbench run optimizer=sgd seeds=N` in a
subprocess, so its time includes start-up (about 4 s of imports), data loading, evaluation,
and writing the CSVs and plots. It runs twice: with the tutorial's one seed, and with
--seeds seeds (default 5), where the start-up is shared and the time per seed is the total
divided by the seeds.

    python scripts/bench_loop.py            # prints the times and the per-seed ratios
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

import torch
import torchvision
from torch import nn

from optbench.data import default_data_dir, prepare


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


def optbench_run(data_dir: Path, seeds: int) -> tuple[float, float, float]:
    """`optbench run` on the same protocol with seeds 0..seeds-1; returns (command seconds,
    mean training seconds per seed, mean final test accuracy in %)."""
    import pandas as pd

    out_dir = Path(tempfile.mkdtemp(prefix="optbench_bench_"))
    command = [
        str(Path(sys.executable).with_name("optbench")),
        "run",
        "experiment=wizard_ffnn",
        "optimizer=sgd",
        f"seeds={seeds}",
        f"data_dir={data_dir}",
        f"hydra.run.dir={out_dir}",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    runs = pd.read_csv(out_dir / "runs.csv")
    final = runs[runs.step == runs.step.max()]
    shutil.rmtree(out_dir)
    return seconds, float(final.wall_s.mean()), 100 * float(final.test_accuracy.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the second optbench run")
    options = parser.parse_args()
    data_dir = default_data_dir()
    prepare("mnist", data_dir)
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
    tutorial_s, tutorial_acc = tutorial_loop(data_dir, seed=0)
    print(
        f"tutorial loop (DataLoader + ToTensor), 1 seed: {tutorial_s:6.1f} s per seed "
        f"(final test accuracy {tutorial_acc:.2f}%)"
    )
    for seeds in (1, options.seeds):
        command_s, train_s, optbench_acc = optbench_run(data_dir, seeds)
        per_seed = command_s / seeds
        print(
            f"optbench run seeds={seeds} (whole command {command_s:5.1f} s): {per_seed:6.1f} s "
            f"per seed (training {train_s:.1f} s, mean final test accuracy {optbench_acc:.2f}%)"
            f"  ratio {tutorial_s / per_seed:5.1f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
