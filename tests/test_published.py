"""The three presets against the reference protocols, and the published-number comparison
against a hand computation."""

from __future__ import annotations

import inspect
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optbench import published
from optbench.engine import make_schedule
from optbench.optimizers import optimizer_class, optimizer_kwargs

from conftest import ROOT, compose_sweep

REFERENCE = ROOT.parent / "shared" / "reference"


def torch_defaults(optimizer_cfg) -> dict:
    signature = inspect.signature(optimizer_class(optimizer_cfg))
    return {k: p.default for k, p in signature.parameters.items() if k != "params"}


def hyperparameters(optimizer_cfg) -> dict:
    return {"_target_": optimizer_cfg._target_, **optimizer_kwargs(optimizer_cfg)}


def check_at_defaults_except(optimizer_cfg, **protocol) -> None:
    expected = {**torch_defaults(optimizer_cfg), **protocol}
    for key, value in optimizer_kwargs(optimizer_cfg).items():
        assert value == expected[key], (optimizer_cfg.name, key, value)


# The protocol values below are transcribed from shared/reference/README.md.


def test_wizard_ffnn_matches_the_reference():
    cfg, optimizers = compose_sweep("experiment=wizard_ffnn")
    assert (cfg.dataset.name, cfg.dataset.normalize, cfg.dataset.train_size) == (
        "mnist",
        None,
        None,
    )
    assert (cfg.model.name, cfg.model.hidden) == ("ffnn", 100)
    schedule = make_schedule(cfg.train, 60000)
    assert (schedule.batch_size, schedule.steps_per_epoch, schedule.total_steps) == (100, 600, 3000)
    assert schedule.eval_steps == [500, 1000, 1500, 2000, 2500, 3000]
    assert cfg.train.test_batch_size == 10000  # the whole test set
    by_name = {o.name: o for o in optimizers}
    assert by_name["sgd"]._target_ == "torch.optim.SGD"
    check_at_defaults_except(by_name["sgd"], lr=0.1)
    check_at_defaults_except(by_name["momentum"], lr=0.1, momentum=0.9)
    check_at_defaults_except(by_name["nesterov"], lr=0.1, momentum=0.9, nesterov=True)
    for name in ("adam", "adagrad", "adadelta", "adamax", "rmsprop"):
        check_at_defaults_except(by_name[name])
    if REFERENCE.is_dir():  # the tutorial's own list of optimizers
        listed = pd.read_csv(REFERENCE / "wizard_ffnn.csv").optimizer.unique()
        assert sorted(by_name) == sorted(listed)


def test_examples_cnn_matches_the_reference():
    cfg, optimizers = compose_sweep("experiment=examples_cnn")
    assert cfg.dataset.name == "mnist"
    assert (list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std)) == (
        [0.1307],
        [0.3081],
    )
    assert (
        cfg.model.name,
        cfg.model.conv1_channels,
        cfg.model.conv2_channels,
        cfg.model.hidden,
    ) == ("lenet", 20, 50, 500)
    schedule = make_schedule(cfg.train, 60000)
    assert (schedule.batch_size, schedule.total_steps) == (64, 10 * 938)
    assert schedule.eval_steps == [938 * e for e in range(1, 11)]  # after every epoch
    assert cfg.train.test_batch_size == 1000
    by_name = {o.name: o for o in optimizers}
    check_at_defaults_except(by_name["sgd"], lr=0.01, momentum=0.5)
    check_at_defaults_except(by_name["amsgrad"], amsgrad=True)
    assert by_name["amsgrad"]._target_ == "torch.optim.Adam"
    assert by_name["adadelta"].lr == 1.0
    for name in ("adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax", "asgd"):
        check_at_defaults_except(by_name[name])
    if REFERENCE.is_dir():  # rprop diverged in the tutorial; it joins with issue 5's optimizers
        listed = set(pd.read_csv(REFERENCE / "examples_cnn.csv").optimizer) - {"rprop"}
        assert set(by_name) == listed


def test_simple_nn_matches_the_reference():
    cfg, optimizers = compose_sweep("experiment=simple_nn")
    assert (list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std)) == ([0.5], [0.5])
    assert (cfg.model.name, cfg.model.hidden) == ("ffnn", 128)
    schedule = make_schedule(cfg.train, 60000)
    assert (schedule.batch_size, schedule.total_steps, len(schedule.eval_steps)) == (64, 5 * 938, 5)
    assert cfg.train.test_batch_size == 64
    assert [(o.name, o.lr) for o in optimizers] == [
        ("sgd", 0.01),
        ("adam", 0.001),
        ("rmsprop", 0.001),
    ]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared/reference is not beside the checkout")
@pytest.mark.parametrize("experiment", ["wizard_ffnn", "examples_cnn"])
def test_shipped_numbers_are_the_references_verbatim(experiment):
    shipped = files("optbench").joinpath(f"published/{experiment}.csv").read_bytes()
    assert shipped == (REFERENCE / f"{experiment}.csv").read_bytes()


def test_published_rows():
    wizard = published.published("wizard_ffnn")
    assert len(wizard) == 8 * 6 * 2 + 8  # loss and accuracy every 500 steps, 8 summary values
    final = wizard[wizard.metric == "final_test_accuracy"].set_index("optimizer").published
    assert final["sgd"] == pytest.approx(0.9578) and final["rmsprop"] == pytest.approx(0.971)
    cnn = published.published("examples_cnn")
    adam3 = cnn[(cnn.optimizer == "adam") & (cnn["at"] == 3) & (cnn.metric == "test_accuracy")]
    assert adam3.published.item() == pytest.approx(0.999)
    assert published.published("simple_nn") is None


def synthetic_runs(accuracies: dict[str, list[float]], step: int = 3000) -> pd.DataFrame:
    rows = [
        {
            "experiment": "wizard_ffnn",
            "dataset": "mnist",
            "model": "ffnn",
            "optimizer": name,
            "seed": seed,
            "step": step,
            "epoch": 5.0,
            "train_loss": 0.1,
            "last_batch_loss": 0.1,
            "test_loss": 0.1,
            "test_accuracy": value,
            "wall_s": 1.0,
        }
        for name, values in accuracies.items()
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_compare_against_a_hand_computation():
    sgd = [0.955, 0.957, 0.959, 0.956]  # published summary: 0.9578
    adam = [0.990, 0.991, 0.992, 0.989]  # published summary: 0.9720, far below
    comparison = published.compare(synthetic_runs({"sgd": sgd, "adam": adam}), "wizard_ffnn")
    final = comparison[comparison.metric == "final_test_accuracy"].set_index("optimizer")
    for name, values, value in (("sgd", sgd, 0.9578), ("adam", adam, 0.9720)):
        row = final.loc[name]
        mean, std = np.mean(values), np.std(values, ddof=1)
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert row["z"] == pytest.approx((value - mean) / std)
        assert (row["min"], row["max"], row["n"]) == (min(values), max(values), 4)
    assert not final.loc["sgd", "flagged"] and final.loc["adam", "flagged"]
    # Truncated integer percents: our mean printed the same way, for an honest reading.
    printed = comparison[comparison.metric == "test_accuracy"].set_index("optimizer")
    assert printed.loc["sgd", "published"] == pytest.approx(0.95)
    assert printed.loc["sgd", "mean_as_printed"] == pytest.approx(0.95)


def test_comparison_files_and_another_dataset_is_not_compared(tmp_path):
    runs = synthetic_runs({"sgd": [0.955, 0.957, 0.959]})
    written = published.write_comparison(tmp_path, runs)
    assert [Path(p).name for p in written] == ["comparison.csv", "comparison.md"]
    text = (tmp_path / "comparison.md").read_text()
    assert "| sgd | 3000 | 5 | 0.9578 |" in text and "1 of 1 published values" in text
    assert (
        published.write_comparison(tmp_path / "other", runs.assign(dataset="fashion_mnist")) == []
    )
