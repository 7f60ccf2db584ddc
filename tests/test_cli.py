"""The `optbench` command end to end, in subprocesses, from outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from constants import PLOTS, SMOKE, check_plots
from omegaconf import OmegaConf

from conftest import OPTBENCH, ROOT, run_cli

pytestmark = pytest.mark.slow


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


def assert_cpu_provenance(provenance) -> None:
    """A CPU run names the CPU (as /proc/cpuinfo does), never a GPU the machine may have,
    and records no CUDA or cuDNN version or setting."""
    assert provenance.device == "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = {line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")}
        assert provenance.device_name in names
    assert not [key for key in provenance if key.startswith(("cuda", "cudnn"))]


def test_run_writes_every_file(tmp_path, data_dir):
    out = tmp_path / "out"
    result = run_cli(
        "run", "optimizer=adam", "seeds=2", SMOKE, f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "runs.csv",
            "summary.csv",
            "config.yaml",
            "optbench.log",
            "report.md",
            "report.html",
            "costs.csv",
            "costs.png",
            *PLOTS,
        ]
    )
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["optimizer", "seed", "step"]].values.tolist() == [
        ["adam", 0, 10],
        ["adam", 1, 10],
        ["adam", 0, 20],
        ["adam", 1, 20],
    ]
    assert runs.test_accuracy.between(0.5, 1).all()  # 10 Adam steps learn something real
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["optimizer", "step", "n"]].values.tolist() == [["adam", 10, 2], ["adam", 20, 2]]
    config = OmegaConf.load(out / "config.yaml")
    assert config.optimizer.name == "adam" and config.seeds == 2
    assert config.dataset.train_size == 1000
    assert config.provenance.optbench_version and "git_revision" in config.provenance
    assert list(config.provenance.overrides)[:2] == ["optimizer=adam", "seeds=2"]
    assert_cpu_provenance(config.provenance)
    check_plots(out)
    assert no_temporary_files(out)
    assert not (tmp_path / "outputs").exists()  # everything went to hydra.run.dir


def test_sweep_trains_every_optimizer_in_one_job(tmp_path, data_dir):
    out = tmp_path / "sweep"
    result = run_cli(
        "sweep",
        "optimizers=[sgd,adam]",
        "seeds=[3,7]",
        SMOKE,
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(set(zip(runs.optimizer, runs.seed, strict=True))) == [
        ("adam", 3),
        ("adam", 7),
        ("sgd", 3),
        ("sgd", 7),
    ]
    config = OmegaConf.load(out / "config.yaml")
    assert config.optimizer_configs.sgd.lr == 0.1  # wizard_ffnn's protocol value
    assert config.optimizer_configs.adam.lr == 0.001
    check_plots(out)
    ranking = pd.read_csv(out / "ranking.csv")
    assert sorted(ranking.optimizer) == ["adam", "sgd"] and ranking["n"].tolist() == [2, 2]
    assert "Ranking" in (out / "report.md").read_text()


def test_multirun_ends_with_combined_results_and_plots(tmp_path, data_dir):
    sweep_dir = tmp_path / "multi"
    result = run_cli(
        "run",
        "-m",
        "optimizer=sgd,adam",
        "seeds=2",
        SMOKE,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for job in ("0", "1"):
        assert (sweep_dir / job / "runs.csv").is_file()
    combined = pd.read_csv(sweep_dir / "runs.csv")
    assert sorted(combined.optimizer.unique()) == ["adam", "sgd"]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == 4 and (summary.n == 2).all()
    check_plots(sweep_dir)


def test_plot_redraws_from_the_files_on_disk(tmp_path, data_dir):
    out = tmp_path / "out"
    assert run_cli("run", "seeds=1", SMOKE, f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    for name in PLOTS:
        (out / name).unlink()
    result = run_cli("plot", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_plots(out)


def test_hydra_flags_work(tmp_path):
    job = run_cli("run", "--cfg", "job", "optimizer=adam", cwd=tmp_path)
    assert job.returncode == 0 and OmegaConf.create(job.stdout).optimizer.name == "adam"
    options = run_cli("run", "--help", cwd=tmp_path).stdout.split("optimizer: ")[1].split("\n")[0]
    assert {"adam", "sgd", "lion", "pto_adam", "soap", "textbook_adam"} <= set(options.split(", "))
    assert "sweep [OVERRIDES]" in run_cli("--help", cwd=tmp_path).stdout
    assert list(tmp_path.iterdir()) == []


BAD_INPUT = [
    (["run", "optimizer=adamm"], ["'adamm'", "close matches: adam,", "`optbench optimizers`"]),
    (["run", "optimizer=LION"], ["'LION'", "close matches: lion"]),
    (
        ["run", "optimizer=lion", "+optimizer.momentum=0.9"],
        ["no hyperparameter 'momentum'", "lr, betas"],
    ),
    (["run", "optimizer=lomo"], ["cannot train on optbench's models", "fused_backward"]),
    (["run", "optimizer=soap", "optimizer.elementwise=true"], ["not element-wise", "soap"]),
    (
        ["run", "optimizer=adan", "optimizer.max_grad_norm=1"],
        ["not element-wise", "elementwise=false"],
    ),
    (["run", "model=resnet"], ["'resnet'", "ffnn, lenet"]),
    (["run", "dataset=imagenet"], ["'imagenet'", "cifar10, fashion_mnist, mnist"]),
    (["run", "experiment=nope"], ["'nope'", "wizard_ffnn"]),
    (["run", "seeds=0"], ["seeds=0", "seeds=5"]),
    (["run", "seeds=-2"], ["seeds=-2"]),
    (["run", "train.batch_size=0"], ["train.batch_size=0", "positive"]),
    (["run", "train.batch_size=-8"], ["train.batch_size=-8"]),
    (["run", "seeds=[1,1]"], ["seeds=[1, 1]", "distinct"]),
    (["run", "train.batch_size=70000"], ["train.batch_size=70000", "(60000 examples)"]),
    (["run", "dataset.train_size=70000"], ["dataset.train_size=70000", "from 1 to 60000"]),
    (["run", "optimizer.lr=-0.1"], ["lr=-0.1", "Invalid learning rate"]),
    (["sweep", "optimizers=[sgd,nope]"], ["'nope'", "no close match", "lists all 156"]),
    (["run", "-m", "optimizer=sgd,adamm"], ["'adamm'"]),
    (["run", "train.epoch=3"], ["train.epoch", "train.epochs"]),
    (["plot", "/nonexistent/results"], ["/nonexistent/results"]),
    (["run", "optimizer.lr=nan"], ["optimizer.lr=nan", "finite number"]),
    (["run", "optimizer.lr=inf"], ["optimizer.lr=inf", "finite number"]),
    (["run", "optimizer=adam", "optimizer.betas=[0.9,nan]"], ["betas=(0.9, nan)", "finite"]),
    (["run", "lr_grid=[nan]"], ["lr_grid=[nan]", "positive finite multiples"]),
    (["run", "optimizer.lr=abc"], ["optimizer.lr='abc'", "must be a number"]),
    (["run", "seeds=[0,99999999999999999999]"], ["from 0 to 4294967295"]),
    (["sweep", "optimizers=[]"], ["optimizers=[] lists no optimizer"]),
    (["tune", "lr_grid=[1,2]"], ["does not apply to `optbench tune`"]),
    (["run", "optimizer=custom", "optimizer._target_=nope.Opt"], ["No module named 'nope'"]),
    (["run", "data_dir=/etc/hostname"], ["/etc/hostname cannot be used"]),
    (
        ["suite", "workloads=[mnist_ffnn,imagenet_vit]"],
        ["imagenet_vit", "valid workloads: mnist_ffnn, fashion_ffnn, mnist_lenet"],
    ),
    (["suite", "workloads=[mnist_ffnn]", "target.test_accuracy=1.5"], ["=1.5", "in (0, 1]"]),
    (["suite", "time=hours"], ["time='hours'", "steps, grad_evals, seconds"]),
    (["suite", "experiment=wizard_ffnn"], ["experiment=wizard_ffnn", "workloads=["]),
    (
        ["suite", "workloads=[cifar10_lenet]", "data_dir=/nonexistent/data"],
        ["'cifar10_lenet'", "not on disk under /nonexistent/data", "optbench data prepare cifar10"],
    ),
    (["targets", "lr_grid=[1,2]"], ["does not apply to `optbench targets`"]),
    (["suite", "--cfg", "job"], ["--cfg", "overrides only"]),
    (["suite", "workloads=[mnist_ffnn]", "seeds=2,3"], ["one job per workload", "key=a,b"]),
    (["suite", "workloads=[mnist_ffnn]", "optimizers=[adam]"], ["lists one", "two or more"]),
    (["suite", "workloads=[mnist_ffnn]", "target.test_accuracy=0.05"], ["no better than guessing"]),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUT, ids=lambda v: " ".join(v)[:40])
def test_bad_input_fails_fast_with_one_paragraph_and_writes_nothing(tmp_path, args, expected):
    if args[0] != "plot":
        args = [*args, f"hydra.run.dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'm'}"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("optbench: error: ") and "\n" not in message, message
    for fragment in expected:
        assert fragment in message
    # How fast: scripts/time_bad_input.py, not a timed test.
    assert list(tmp_path.iterdir()) == []  # no output folder, no multirun folder


def test_a_dataset_that_cannot_be_prepared_fails_before_training(tmp_path):
    from test_data import _network_reachable

    if _network_reachable():
        pytest.skip("would download CIFAR-10 for real")
    empty = tmp_path / "no_data"
    empty.mkdir()
    result = run_cli(
        "run",
        "dataset=cifar10",
        f"data_dir={empty}",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "cifar-10-python.tar.gz" in result.stderr and str(empty) in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_plain_wheel_ships_the_configs_and_the_console_script(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("optbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "optbench = optbench.cli:console" in archive.read(entry_points).decode()
    for config in [
        "config.yaml",
        "optimizer/adam.yaml",
        "optimizer/lion.yaml",  # generated from pytorch_optimizer's registry
        "experiment/wizard_ffnn.yaml",
        "experiment/examples_cnn.yaml",
        "model/lenet.yaml",
    ]:
        assert f"optbench/configs/{config}" in names
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    probe = (
        "import optbench, sys; from optbench.cli import main; "
        "print(optbench.__file__); "
        "sys.exit(main(['optimizers']) or main(['run', '--cfg', 'job', 'optimizer=adamw']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site))  # the wheel's copy, not the checkout
    assert "_target_: torch.optim.AdamW" in result.stdout
    assert "pytorch_optimizer 4.1.0" in result.stdout  # src/optbench/pytorch_optimizer.yaml


def test_the_console_script_exits_with_the_commands_code_and_everything_written(tmp_path):
    """The console script skips Python's teardown after the work (cli.console): its exit
    code is still main's, and its output, log and files are complete."""
    out = tmp_path / "out"
    done = subprocess.run(
        [OPTBENCH, "run", "seeds=1", SMOKE, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"Results in {out}" in done.stdout  # the last line, flushed into the pipe
    assert f"Results in {out}" in (out / "optbench.log").read_text()
    assert len(pd.read_csv(out / "runs.csv")) == 2 and no_temporary_files(out)
    refused = subprocess.run(
        [OPTBENCH, "run", "optimizer=nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "Unknown optimizer 'nope'" in refused.stderr
