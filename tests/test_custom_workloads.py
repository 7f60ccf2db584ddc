"""A model and a dataset of the user's own, benchmarked as the built-ins are: named by
`_target_` (a torchvision builder, a class in a file on PYTHONPATH), trained alone and in
a group, resumed after kill -9 bit for bit, identified by the SHA-256 of their files, and
refused before training when they cannot train (exit 2, one paragraph, nothing written)."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from test_bad_input import refused
from test_resume import start_and_stop

from optbench.results import store
from optbench.results.provenance import CONFIG_YAML

from conftest import ROOT, run_cli, run_plan

# A user's module: a model with buffers (BatchNorm) and random draws (dropout), models that
# cannot train, and a function returning a dataset's tensors.
USER_MODULE = '''
import math

import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, input_shape, num_classes, width=32, p=0.25):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.body(x)


class NoParameters(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.zeros(len(x), self.num_classes)


class Classes(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)).argmax(dim=1, keepdim=True).expand(-1, 10)


class ThreeOutputs(nn.Module):
    def __init__(self, input_shape):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def not_a_module(num_classes):
    return num_classes


def blobs(n_train=60, n_test=30, classes=3, one_class=False, mismatch=False, label=None):
    """Gaussian blobs, one per class, as 1x4x4 images."""
    g = torch.Generator().manual_seed(0)
    def split(n):
        y = torch.arange(n) % classes
        x = torch.randn(n, 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1).float()
        return x, y
    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    if one_class:
        train_y = torch.zeros_like(train_y)
    if mismatch:
        train_y = train_y[:-1]
    if label is not None:
        test_y[0] = label
    return train_x, train_y, test_x, test_y
'''

_numbers = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """The user's module in a folder on the path, under a name of its own for each test
    (a module is imported once per process)."""
    name = f"my_nets_{os.getpid()}_{next(_numbers)}"
    folder = tmp_path / "my_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return name


def comparable(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / store.RUNS_CSV).drop(columns="wall_s")


def trained(tmp_path: Path, name: str, *args: str) -> Path:
    folder = tmp_path / name
    done = run_cli(*args, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return folder


def fake_data(size: int, image_size: str) -> tuple[str, ...]:
    """torchvision's FakeData, 10 classes: a training and a test split of `size` images
    each, told apart by their random_offset (FakeData draws image i from seed i + offset)."""
    return (
        "dataset=custom",
        "dataset._target_=torchvision.datasets.FakeData",
        f"+dataset.args.size={size}",
        f"+dataset.args.image_size={image_size}",
        "+dataset.args.num_classes=10",
        "+dataset.train_args.random_offset=0",
        "+dataset.test_args.random_offset=1000000",
        "dataset.num_classes=10",  # a few labels drawn need not hold all ten classes
    )


def test_a_torchvision_resnet18_trains_on_fakedata_shaped_like_cifar10(tmp_path, data_dir):
    folder = trained(
        tmp_path,
        "resnet",
        "run",
        *fake_data(16, "[3,32,32]"),
        "model=custom",
        "model._target_=torchvision.models.resnet18",
        "+model.num_classes=10",
        "optimizer=sgd",
        "train.steps=20",
        "train.batch_size=4",
        "train.eval_every=10",
        "threads=1",
    )
    runs = comparable(folder)
    assert list(runs["step"]) == [10, 20] and not runs["diverged"].any()
    assert runs["test_accuracy"].between(0, 1).all() and np.isfinite(runs["train_loss"]).all()
    config = OmegaConf.load(folder / CONFIG_YAML)
    assert list(config.dataset.input_shape) == [3, 32, 32] and config.dataset.examples.train == 16
    assert len(config.model.source_sha256) == 64 and len(config.dataset.source_sha256) == 64


def test_a_users_model_trains_alone_in_a_group_and_beside_other_runs(
    tmp_path, data_dir, user_module
):
    """MyNet (BatchNorm, dropout) on MNIST: a run gives the same numbers trained with
    others on two threads (adam's runs share one optimizer call) as trained alone, and
    stack_runs=always trains it alone too (a user's model never stacks)."""
    model = ("model=custom", f"model._target_={user_module}.MyNet", "+model.width=16")
    together = trained(
        tmp_path,
        "together",
        "sweep",
        *model,
        "optimizers=[adam,sgd]",
        "seeds=2",
        "threads=2",
        "debug=smoke",
    )
    alone = trained(
        tmp_path,
        "alone",
        "sweep",
        *model,
        "optimizers=[adam]",
        "seeds=[1]",
        "threads=1",
        "debug=smoke",
        "stack_runs=always",
    )
    runs = comparable(together)
    one = runs[(runs.optimizer == "adam") & (runs.seed == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, comparable(alone), check_exact=True)
    seeds = runs[runs.optimizer == "adam"].groupby("seed")["train_loss"].apply(list)
    assert seeds[0] != seeds[1]  # each seed its own weights, batches and dropout masks
    assert runs["test_accuracy"].iloc[-1] > 0.5  # it learns: evaluated in eval mode


def test_a_users_model_on_a_users_data_function_and_on_fakedata(tmp_path, user_module):
    model = ("model=custom", f"model._target_={user_module}.MyNet", "+model.width=8")
    steps = ("train.steps=20", "train.batch_size=10", "train.eval_every=10", "seeds=2")
    blobs = trained(
        tmp_path,
        "blobs",
        "run",
        "dataset=custom",
        f"dataset._target_={user_module}.blobs",
        "dataset.normalize=auto",
        *model,
        "optimizer=adam",
        "optimizer.lr=0.05",
        *steps,
    )
    config = OmegaConf.load(blobs / CONFIG_YAML)
    assert (list(config.dataset.input_shape), config.dataset.num_classes) == ([1, 4, 4], 3)
    namespace: dict = {}
    exec(USER_MODULE, namespace)
    train_x = namespace["blobs"]()[0]
    assert config.dataset.normalize.mean == pytest.approx([train_x.double().mean().item()])
    assert config.dataset.normalize.std == pytest.approx([train_x.double().std().item()])
    assert comparable(blobs)["test_accuracy"].iloc[-1] > 0.6  # three blobs told apart
    stacked, alone = (
        trained(
            tmp_path,
            name,
            "run",
            *fake_data(16, "[1,8,8]"),
            *model,
            "optimizer=adam",
            *steps,
            f"stack_runs={how}",
        )
        for name, how in (("stacked", "always"), ("alone", "never"))
    )
    pd.testing.assert_frame_equal(comparable(stacked), comparable(alone), check_exact=True)


def test_a_folder_of_png_images_trains_with_its_shape_and_classes_read(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 6)):
        for label, name in enumerate(("cat", "dog", "fox")):
            (tmp_path / "pngs" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
                pixels[..., label] = 255  # each class its own colour
                Image.fromarray(pixels).save(tmp_path / "pngs" / split / name / f"{i}.png")
    folder = trained(
        tmp_path,
        "out",
        "run",
        "dataset=custom",
        f"dataset.folder={tmp_path / 'pngs'}",
        "model=lenet",
        "model.conv1_channels=2",
        "model.conv2_channels=2",
        "model.hidden=8",
        "train.steps=20",
        "train.batch_size=6",
        "train.eval_every=10",
    )
    config = OmegaConf.load(folder / CONFIG_YAML)
    assert list(config.dataset.input_shape) == [3, 20, 16] and config.dataset.num_classes == 3
    assert dict(config.dataset.examples) == {"train": 36, "test": 18}
    assert len(comparable(folder)) == 2


def test_a_users_model_killed_with_sigkill_resumes_bit_for_bit(
    tmp_path, data_dir, user_module, monkeypatch
):
    job = (
        "sweep",
        "model=custom",
        f"model._target_={user_module}.MyNet",
        "+model.width=16",
        "optimizers=[adam,sgd]",
        "seeds=2",
        "dataset.train_size=2000",
        "train.steps=300",
        "train.eval_every=20",
        "threads=1",
    )
    uninterrupted = trained(tmp_path, "uninterrupted", *job)
    killed = tmp_path / "killed"
    # the child optbench imports the user's module from PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'src'}{os.pathsep}{tmp_path / 'my_code'}")
    seed = random.randrange(10**6)
    stopped = start_and_stop(killed, signal.SIGKILL, random.Random(seed), job)
    assert stopped.returncode == -signal.SIGKILL, f"random seed {seed}: {stopped.stderr}"
    assert not (killed / store.RUNS_CSV).exists(), "the job ended before the kill"
    resumed = run_cli(*job, f"hydra.run.dir={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(comparable(killed), comparable(uninterrupted), check_exact=True)


# ---------------------------------------------------------------------------------------
# A workload of the user's own: docs/custom_workloads.md's example, at smoke size


def page_files(page: Path) -> dict[str, str]:
    """The files a page shows: each fenced block whose first line is `# <path>`, by path."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", page.read_text(), re.S)
    return {name: text for name, text in blocks}


def test_the_documented_workload_gets_a_target_in_its_own_preset_and_joins_the_suite(
    tmp_path, data_dir, monkeypatch
):
    files = page_files(ROOT / "docs" / "custom_workloads.md")
    assert sorted(files) == [
        "my_configs/experiment/fashion_wide_mlp.yaml",
        "my_configs/model/wide_mlp.yaml",
        "my_models.py",
    ]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # smoke size (debug=smoke's values) as the preset's own protocol, so that its target is
    # derived on the protocol that the suite with debug=smoke trains
    preset = tmp_path / "my_configs" / "experiment" / "fashion_wide_mlp.yaml"
    text = preset.read_text().replace(
        "  epochs: 3\n  eval_every: 100\n", "  steps: 20\n  eval_every: 10\n"
    )
    text = text.replace("target:\n", "dataset:\n  train_size: 1000\n  test_size: 500\n\ntarget:\n")
    preset.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    ours = {p: p.read_bytes() for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"
    small = ("seeds=2", "optimizers=[adam,sgd]")
    derived = run_cli(
        "targets",
        "workloads=[fashion_wide_mlp]",
        *small,
        searchpath,
        f"hydra.sweep.dir={tmp_path / 'targets'}",
        cwd=tmp_path,
    )
    assert derived.returncode == 0, derived.stderr
    target = OmegaConf.load(preset).target
    assert 0.1 < target.test_accuracy <= 1 and sorted(target.derived.reference) == ["adam", "sgd"]
    assert {p: p.read_bytes() for p in ours} == ours  # optbench's own presets untouched
    suite = run_cli(
        "suite",
        "workloads=[mnist_ffnn,fashion_wide_mlp]",
        *small,
        "debug=smoke",
        searchpath,
        f"hydra.sweep.dir={tmp_path / 'suite'}",
        cwd=tmp_path,
    )
    assert suite.returncode == 0, suite.stderr
    workloads = pd.read_csv(tmp_path / "suite" / "workloads.csv").set_index("workload")
    assert workloads.loc["fashion_wide_mlp", "target"] == target.test_accuracy
    assert workloads.loc["fashion_wide_mlp", "model"] == "wide_mlp"
    assert bool(workloads.loc["fashion_wide_mlp", "target_on_this_protocol"])
    times = pd.read_csv(tmp_path / "suite" / "time_to_target.csv")
    assert set(times["workload"]) == {"mnist_ffnn", "fashion_wide_mlp"}


def test_a_target_replaces_a_users_own_target_section_and_keeps_every_other_key(tmp_path):
    """A user's preset has a `target:` section of its own, anywhere in the file, and no
    marker yet: the derived target takes its place, at the end."""
    from optbench.analysis import targets

    preset = tmp_path / "mine.yaml"
    preset.write_text(
        "# @package _global_\n# my workload\nexperiment_name: mine\n"
        "target:\n  test_accuracy: null  # derived later\n\n"
        "optimizers: [adam, sgd]\ntrain:\n  steps: 20\n"
    )
    for value in (0.5, 0.625):
        derived = targets.derivation({"adam": value}, [0, 1], tmp_path, "optbench", "abc")
        targets.write_into_preset(preset, value, derived)
    text = preset.read_text()
    assert text.startswith("# @package _global_\n# my workload\n")
    assert text.count(targets.MARKER) == 1 and text.count("\ntarget:") == 1
    loaded = OmegaConf.load(preset)
    assert (loaded.target.test_accuracy, loaded.target.derived.reference.adam) == (0.625, 0.625)
    assert list(loaded.optimizers) == ["adam", "sgd"] and loaded.train.steps == 20


# ---------------------------------------------------------------------------------------
# Identity: the files that define a model, a dataset and an optimizer


def test_editing_the_models_file_changes_the_fingerprint(tmp_path, user_module):
    args = (
        "model=custom",
        f"model._target_={user_module}.MyNet",
        "dataset=custom",
        f"dataset._target_={user_module}.blobs",
        "optimizer=custom",
        f"optimizer._target_={user_module}.SGDLike",
        "train.batch_size=10",
    )
    path = tmp_path / "my_code" / f"{user_module}.py"
    path.write_text(path.read_text() + "\n\nclass SGDLike(torch.optim.SGD):\n    pass\n")
    before = run_plan(*args)
    path.write_text(path.read_text().replace("width=32", "width=33"))
    after = run_plan(*args)
    assert before.fingerprint != after.fingerprint
    assert before.model["source_sha256"] != after.model["source_sha256"]
    assert before.optimizers[0].hyperparameters != after.optimizers[0].hyperparameters
    assert before.config["dataset"]["data_sha256"] == after.config["dataset"]["data_sha256"]
    assert run_plan(*args, "+model.width=64").fingerprint != after.fingerprint


@pytest.mark.parametrize(
    "config", sorted((ROOT / "results").rglob(CONFIG_YAML)), ids=lambda p: p.parent.name
)
def test_built_in_protocols_keep_their_fingerprints(config):
    """The committed results' protocols compose to the fingerprints recorded with them."""
    recorded = OmegaConf.load(config)
    overrides = [o for o in recorded.provenance.overrides if not o.startswith("optimizers=")]
    plan = run_plan(*overrides)
    if recorded.dataset.get("validation_size"):  # a tuning job holds out its own
        plan = plan.choosing_on_validation()
    assert plan.fingerprint == recorded.provenance.protocol_fingerprint


# ---------------------------------------------------------------------------------------
# Refused before training: exit 2, one paragraph naming the key and value, nothing written

BAD = {
    "import": (["model._target_=no_such_module.Net"], ["model._target_='no_such_module.Net'"]),
    "not a module": (["model._target_={m}.not_a_module"], ["{m}.not_a_module", "not a torch.nn"]),
    "no parameters": (["model._target_={m}.NoParameters"], ["{m}.NoParameters", "no parameters"]),
    "shape": (["model._target_={m}.ThreeOutputs"], ["{m}.ThreeOutputs", "shape [2, 3]", "[2, 10]"]),
    "dtype": (["model._target_={m}.Classes"], ["{m}.Classes", "dtype int64"]),
    "weights": (
        ["model._target_=torchvision.models.resnet18", "+model.weights=IMAGENET1K_V1"],
        ["model.weights='IMAGENET1K_V1'", "downloads none"],
    ),
    "built-in argument": (["model=ffnn", "+model.width=3"], ["model.width=3", "takes hidden"]),
    "one class": (
        ["dataset=custom", "dataset._target_={m}.blobs", "+dataset.args.one_class=true"],
        ["dataset._target_={m}.blobs", "one class only"],
    ),
    "lengths": (
        ["dataset=custom", "dataset._target_={m}.blobs", "+dataset.args.mismatch=true"],
        ["dataset._target_={m}.blobs", "60 images but 59 labels"],
    ),
    "label": (
        [
            "dataset=custom",
            "dataset._target_={m}.blobs",
            "+dataset.args.label=7",
            "dataset.num_classes=3",
        ],
        ["dataset._target_={m}.blobs", "label 7 is out of range for num_classes=3"],
    ),
    "no split": (
        ["dataset=custom", "dataset._target_=torchvision.datasets.FakeData"],
        ["dataset._target_=torchvision.datasets.FakeData", "random_offset"],
    ),
    "too small for the lenet": (
        ["dataset=custom", "dataset._target_={m}.blobs", "model=lenet"],
        ["model=lenet fails on a batch", "dataset.input_shape=[1, 4, 4]"],
    ),
    "folder": (["dataset=custom", "dataset.folder=/nonexistent"], ["dataset.folder=/nonexistent"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_model_or_dataset_that_cannot_train_is_refused(tmp_path, user_module, case):
    overrides, fragments = BAD[case]
    if not any(o.startswith("model=") for o in overrides) and "model" in overrides[0]:
        overrides = ["model=custom", *overrides]
    if overrides[0].startswith("dataset") and "model=lenet" not in overrides:
        overrides = [*overrides, "model=custom", f"model._target_={user_module}.MyNet"]
    before = sorted(tmp_path.iterdir())
    done = run_cli(
        "run",
        *(o.format(m=user_module) for o in overrides),
        "train.batch_size=10",
        "train.steps=2",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    refused(done, 2, *(f.format(m=user_module) for f in fragments))
    assert sorted(tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------
# From Python: a class or function passed directly, recorded by its import path


def test_a_model_class_passed_from_python_trains_as_its_import_path(tmp_path, user_module):
    import importlib

    import optbench

    net = importlib.import_module(user_module).MyNet
    settings = dict(seeds=1, debug="smoke", progress=False)
    given = optbench.run(model=net, out=tmp_path / "class", **settings)
    by_path = optbench.run(
        overrides=["model=custom", f"model._target_={user_module}.MyNet"],
        out=tmp_path / "path",
        **settings,
    )
    recorded = OmegaConf.load(given.folder / CONFIG_YAML)
    assert recorded.model._target_ == f"{user_module}.MyNet"
    pd.testing.assert_frame_equal(comparable(given.folder), comparable(by_path.folder))


def test_a_class_no_other_process_can_import_is_refused_before_training(tmp_path):
    from torch import nn

    import optbench
    from optbench.errors import ConfigError

    class Local(nn.Module):  # defined inside a function: no import path reaches it
        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match="cannot be imported by one") as refused_here:
        optbench.run(model=Local, debug="smoke", out=tmp_path / "never", progress=False)
    assert "model=" in str(refused_here.value) and "PYTHONPATH" in str(refused_here.value)
    with pytest.raises(ConfigError, match="an object cannot be recorded"):
        optbench.run(model=Local(), debug="smoke", out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
