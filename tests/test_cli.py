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

from optbench import helptext

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
            "checksums.sha256",
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
    for job, name in (("0", "sgd"), ("1", "adam")):
        assert (sweep_dir / job / "runs.csv").is_file()
        log = (sweep_dir / job / "optbench.log").read_text()  # each job ends with its table
        table = log[log.index("Final test accuracy at step 20:") :].splitlines()
        assert table[1].split()[:2] == ["optimizer", "accuracy"]
        assert table[2].split()[0] == name
    assert result.stdout.count("Final test accuracy at step 20:") == 2
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
    assert "sweep [OVERRIDES]" in run_cli("--help", cwd=tmp_path).stdout
    assert list(tmp_path.iterdir()) == []


def _user_optimizer_folder(tmp_path: Path) -> str:
    """A user's config folder holding one optimizer file; its hydra.searchpath override."""
    (tmp_path / "my_configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_configs" / "optimizer" / "my_lion.yaml").write_text(
        "name: my_lion\n_target_: my_package.Lion\nlr: 0.001\n"
    )
    return f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"


@pytest.mark.parametrize("columns", [60, 100])
def test_run_help_lists_the_user_facing_groups_wrapped_to_the_terminal(
    tmp_path, monkeypatch, columns
):
    monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
    searchpath = _user_optimizer_folder(tmp_path)
    result = run_cli("run", "--help", searchpath, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "for_choice" not in result.stdout and "powered by Hydra" not in result.stdout
    # each item its own line once the wrapped lines (indented by six) are joined again
    items = result.stdout.split("\n\n")[2].replace("\n      ", " ").splitlines()[1:]
    groups = [line.split()[0].rstrip(":") for line in items if not line.startswith("    ")]
    assert (
        groups
        == list(helptext.GROUPS)
        == [
            *("experiment", "dataset", "model", "optimizer"),
            *("schedule", "logger", "regime", "debug"),
        ]
    )
    # the optimizers by source: every config file, once, and the user's own
    blocks = items[items.index(next(i for i in items if i.startswith("  optimizer"))) + 1 :]
    blocks = blocks[: next(k for k, line in enumerate(blocks) if not line.startswith("    "))]
    by_source = {b.split(": ")[0].strip(): b.split(": ", 1)[1].split(", ") for b in blocks}
    shipped = {p.stem for p in (ROOT / "configs" / "optimizer").glob("*.yaml")}
    listed = [name for names in by_source.values() for name in names]
    assert sorted(listed) == sorted(shipped | {"my_lion"})
    assert list(by_source)[:2] == ["torch.optim", "optbench's own"]
    assert {"adam", "sgd", "lbfgs"} <= set(by_source["torch.optim"])
    assert {"custom", "textbook_adam"} <= set(by_source["optbench's own"])
    registry = next(source for source in by_source if source.startswith("pytorch_optimizer"))
    assert {"lion", "soap", "pto_adam"} <= set(by_source[registry])
    assert by_source["configs on your search path"] == ["my_lion"]
    assert list(tmp_path.iterdir()) == [tmp_path / "my_configs"]  # nothing trained or written


def test_optimizers_names_a_users_own_file_by_its_search_path(tmp_path):
    searchpath = _user_optimizer_folder(tmp_path)
    result = run_cli("optimizers", searchpath, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("my_lion "))
    assert row.split()[1:6] == ["configs", "on", "your", "search", "path"]
    assert "my_lion" not in run_cli("optimizers", cwd=tmp_path).stdout
    other = run_cli("optimizers", "optimizer=adam", cwd=tmp_path)
    assert other.returncode == 2 and "takes no 'optimizer=adam'" in other.stderr
    missing = f"hydra.searchpath=[file://{tmp_path / 'nowhere'}]"
    for command in (["optimizers"], ["run", "--help"]):
        refused = run_cli(*command, missing, cwd=tmp_path)
        assert refused.returncode == 2 and "nowhere, which is not a folder" in refused.stderr
    (tmp_path / "my_configs" / "optimizer" / "broken.yaml").write_text("name: [unclosed\n")
    broken = run_cli("optimizers", searchpath, cwd=tmp_path)
    assert broken.returncode == 2 and "broken.yaml is not valid YAML" in broken.stderr
    assert "Traceback" not in broken.stderr


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
    (["run", "model=resnet"], ["'resnet'", "custom, ffnn, lenet", "model._target_=..."]),
    (["run", "dataset=imagenet"], ["'imagenet'", "cifar10, custom, fashion_mnist, mnist"]),
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
    assert (
        "pytorch_optimizer 4.1.0" in result.stdout
    )  # src/optbench/optimizers/pytorch_optimizer.yaml


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
    assert "step 20/20: mean test accuracy" in (out / "optbench.log").read_text()
    assert str(tmp_path) not in (out / "optbench.log").read_text()  # no path of the machine
    assert len(pd.read_csv(out / "runs.csv")) == 2 and no_temporary_files(out)
    refused = subprocess.run(
        [OPTBENCH, "run", "optimizer=nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "Unknown optimizer 'nope'" in refused.stderr
