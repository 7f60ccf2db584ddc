"""Every shell command of README.md and docs/ runs as written.

The commands are read from the fenced ```bash blocks (a line ending in a backslash goes on
on the next; comments are dropped) and each runs through the installed console script in a
fresh working directory with the default output folders, as a user would type it. Commands
that train are shrunk in the only ways a reader could tell apart from the page: debug=smoke
added, more than two seeds cut to two, tuning.trials cut to two. The `make` commands run in
a copy of the checkout (tracked files, its .venv and data/ linked in), since a Makefile works
on its own folder. The few commands that cannot run here are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from constants import SMOKE
from test_custom_workloads import page_files

from conftest import OPTBENCH, ROOT

pytestmark = pytest.mark.slow

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAINING = ("run", "sweep", "tune", "suite", "targets")

# Commands that cannot run in a test, by a regular expression over the command: the reason.
SKIPPED = {
    r"^make test\b": "it is the command that runs this test",
    r"^make reproduce\b": "it trains the three tutorials' committed results for hours",
    r"^source ": "it changes the reader's shell, not optbench",
    r"submitit_slurm": "it needs a SLURM cluster",
    r"device=cuda": "it needs a GPU (make gpu-check runs the CUDA tests there)",
    r"cifar10": "CIFAR-10 has no offline source here (torchvision downloads it)",
    r"^optbench targets\b": "it writes the derived targets into the workloads' presets "
    "(tests/test_suite.py and tests/test_custom_workloads.py derive targets into copies)",
    r"^make bench\b": "it measures the machine for about 16 minutes (tests/test_bench.py "
    "checks its parts)",
    r"^make gpu-check\b": "it needs a machine with CUDA",
    r"^export ": "it changes the reader's shell (the test puts the working directory on "
    "PYTHONPATH)",
    r"dataset\.folder=": "it needs a folder of the reader's images (tests/test_custom_workloads.py "
    "trains on one it makes)",
    r"^optbench suite workloads=\[mnist_ffnn,fashion_wide_mlp\]": "it needs the target that "
    "`optbench targets` derives first (tests/test_custom_workloads.py runs both)",
}

# Placeholders a reader replaces: what the test puts in their place.
PLACEHOLDERS = {
    "OLD_DIR": "results/wizard_ffnn",
    "NEW_DIR": "results/wizard_ffnn_rerun",
    "/abs/path/to/my_configs": "{cwd}/my_configs",  # holds docs/optimizers.md's my_lion.yaml
}

# The user's own package that docs/optimizers.md imports optimizers from (my_package.Lion,
# my_package.MyOptimizer): the test writes it into the working directory.
MY_PACKAGE = '''
import torch


class Lion(torch.optim.Optimizer):
    """The sign of an interpolated momentum (Chen et al., 2023)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(beta1 * m + (1 - beta1) * p.grad), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class MyOptimizer(torch.optim.Optimizer):
    """The sign of a momentum with its own beta."""

    def __init__(self, params, lr=1e-3, beta=0.9):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    m = self.state[p].setdefault("m", torch.zeros_like(p))
                    m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                    p.add_(torch.sign(m), alpha=-group["lr"])
'''


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the fenced shell blocks, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    found.append((page.relative_to(ROOT).as_posix(), command))
    return found


def as_tested(command: str) -> str:
    """The command as the test runs it: placeholders filled in, training shrunk."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    words = command.split()
    if words[0] in ("optbench", "make") and words[1] == "suite" and "seeds=" not in command:
        command += " seeds=2"  # a suite's default is 3
    trains = words[0] == "optbench" and words[1] in TRAINING
    trains = trains and not {"--help", "--cfg", "--info"} & set(words)
    if words[0] == "make" and words[1] == "sweep":
        return f"make sweep SEEDS=2 ARGS={SMOKE}"
    if words[0] == "make" and words[1] == "suite":  # both tracks: the tuned one's trials cut
        return f"make suite SUITE_SEEDS=2 ARGS='{SMOKE} tuning.trials=2'"
    if not trains:
        return command
    command = re.sub(r"\bseeds=([3-9]|\d\d+)\b", "seeds=2", command)
    command = re.sub(r"\btuning\.trials=\d+", "tuning.trials=2", command)
    if re.search(r"\btrack=(tuned|both)\b", command) and "tuning.trials=" not in command:
        command += " tuning.trials=2"  # the tuned track's 8 trials cut to two
    return command if SMOKE in words else f"{command} {SMOKE}"


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


CASES = list(dict.fromkeys(as_tested(command) for _, command in documented_commands()))


def test_the_pages_have_commands():
    """The extractor finds the README's commands (an empty list would pass every case)."""
    commands = [command for page, command in documented_commands() if page == "README.md"]
    assert "make sweep" in commands and "make test" in commands
    assert "optbench run -m optimizer=sgd,adam,rmsprop" in commands
    assert len(CASES) > 30


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout's tracked files (their times kept, so make sees .venv as up to
    date), with its .venv and data/ linked in, and without the committed wizard_ffnn results:
    `make sweep` there trains a smoke protocol, which the committed folder's rerun check would
    rightly refuse to compare."""
    copy = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for linked in (".venv", "data"):
        (copy / linked).symlink_to(ROOT / linked)
    shutil.rmtree(copy / "results" / "wizard_ffnn")
    return copy


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command in cwd, with the venv's console script first on PATH and cwd importable
    (where a user keeps my_package)."""
    words = shlex.split(command.replace("{cwd}", str(cwd)))
    if words[0] == "optbench":
        words[0] = OPTBENCH
    path = f"{Path(OPTBENCH).parent}{os.pathsep}{os.environ['PATH']}"
    # cwd first, then the PYTHONPATH the tests run with (the checkout's src/, where set)
    pythonpath = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PATH": path, "PYTHONPATH": pythonpath}
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _user_files(cwd: Path) -> None:
    """What a reader of docs/optimizers.md has made: my_package, and my_configs/optimizer/
    holding the page's my_lion.yaml; and of docs/custom_workloads.md: its my_models.py and
    my_configs/model/ and experiment/ files."""
    for name, text in page_files(ROOT / "docs" / "custom_workloads.md").items():
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(text)
    (cwd / "my_package").mkdir()
    (cwd / "my_package" / "__init__.py").write_text(MY_PACKAGE)
    page = (ROOT / "docs" / "optimizers.md").read_text()
    my_lion = next(b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "my_lion" in b)
    (cwd / "my_configs" / "optimizer").mkdir(parents=True, exist_ok=True)
    (cwd / "my_configs" / "optimizer" / "my_lion.yaml").write_text(my_lion)


@pytest.mark.parametrize("command", CASES)
def test_documented_command_runs(command, tmp_path, checkout, data_dir):
    if why := skip_reason(command):
        pytest.skip(why)
    cwd = checkout if command.startswith("make ") else tmp_path
    if "results/wizard_ffnn" in command:  # the committed folder the page points at
        shutil.copytree(ROOT / "results" / "wizard_ffnn", cwd / "results" / "wizard_ffnn")
        if "results/wizard_ffnn_rerun" in command:
            shutil.copytree(cwd / "results" / "wizard_ffnn", cwd / "results" / "wizard_ffnn_rerun")
    if "my_" in command or "wide_mlp" in command:
        _user_files(cwd)
    result = _run(command, cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    if command.startswith("make sweep"):  # again: the rerun check has something to compare
        again = _run(command, cwd)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert "BIT-IDENTICAL" in again.stdout
    words = command.split()
    if words[0] == "optbench" and words[1] in ("run", "sweep", "tune") and "--" not in command:
        given = [
            w.split("=", 1)[1]
            for w in words
            if w.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
        ]
        root = cwd / (given[-1] if given else "multirun" if "-m" in words else "outputs")
        assert list(root.rglob("runs.csv")), f"no runs.csv under {root}"
