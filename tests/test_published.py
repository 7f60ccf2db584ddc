"""The three presets against the reference protocols (tests/reference_protocols.py), and the
published-number comparison against a hand computation."""

from __future__ import annotations

import hashlib
import inspect
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optbench.analysis import published
from optbench.data import prepare
from optbench.optimizers.build import optimizer_class, optimizer_kwargs

from conftest import ROOT, sweep_plan
from reference_protocols import PROTOCOLS, PUBLISHED_SHA256


def torch_defaults(optimizer_cfg) -> dict:
    signature = inspect.signature(optimizer_class(optimizer_cfg))
    return {k: p.default for k, p in signature.parameters.items() if k != "params"}


@pytest.mark.parametrize("experiment", sorted(PROTOCOLS))
def test_every_preset_matches_the_reference_protocol(experiment):
    """The preset, composed as `optbench sweep` composes it, against the independent table
    in tests/reference_protocols.py."""
    reference = PROTOCOLS[experiment]
    plan = sweep_plan(f"experiment={experiment}")
    assert plan.dataset["name"] == reference["dataset"]
    normalize = plan.dataset["normalize"]
    if reference["normalize"] is None:
        assert normalize is None
    else:
        assert (normalize["mean"], normalize["std"]) == tuple(map(list, reference["normalize"]))
    assert prepare.train_size(plan.dataset) == reference["train_size"]
    model, model_keys = reference["model"]
    assert plan.model["name"] == model
    assert {key: plan.model[key] for key in model_keys} == model_keys
    step_plan = plan.steps
    assert step_plan.batch_size == reference["batch_size"]
    assert step_plan.total_steps == reference["total_steps"]
    assert step_plan.eval_steps == reference["eval_steps"]
    assert plan.train["test_batch_size"] == reference["test_batch_size"]
    assert sorted(o.name for o in plan.optimizers) == sorted(reference["optimizers"])
    for spec in plan.optimizers:
        target, changed = reference["optimizers"][spec.name]
        assert spec.config["_target_"] == target, spec.name
        expected = {**torch_defaults(spec.config), **changed}
        for key, value in optimizer_kwargs(spec.config).items():
            assert value == expected[key], (spec.name, key, value)


@pytest.mark.parametrize("experiment", sorted(PUBLISHED_SHA256))
def test_shipped_numbers_are_the_tutorials_tables(experiment):
    shipped = files("optbench.analysis").joinpath(f"published/{experiment}.csv").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == PUBLISHED_SHA256[experiment]
    listed = pd.read_csv(files("optbench.analysis").joinpath(f"published/{experiment}.csv").open())
    # the tutorial's own optimizers; rprop diverged in examples_cnn and is not a preset
    assert set(listed.optimizer) - {"rprop"} == set(PROTOCOLS[experiment]["optimizers"])


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
            "lr": 0.1,
            "hyperparameters": '{"lr":0.1}',
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


def test_beside_ours_against_a_hand_computation():
    sgd = [0.955, 0.957, 0.959, 0.956]  # published summary: 0.9578
    adam = [0.990, 0.991, 0.992, 0.989]  # published summary: 0.9720, far below
    comparison = published.beside_ours(synthetic_runs({"sgd": sgd, "adam": adam}), "wizard_ffnn")
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


@pytest.mark.parametrize("experiment", ["wizard_ffnn", "examples_cnn"])
def test_one_seed_compares_without_nan_and_mean_as_printed_only_where_truncated(
    tmp_path, experiment
):
    """The committed runs of seed 0 alone: the mean is printed without "± nan" and z as
    "—"; only wizard_ffnn's accuracies were printed truncated, so only its comparison.csv
    has a mean_as_printed column (examples_cnn's would be empty)."""
    runs = pd.read_csv(ROOT / "results" / experiment / "runs.csv")
    published.write_comparison(tmp_path, runs[runs.seed == 0])
    text = (tmp_path / "comparison.md").read_text()
    assert "(n=1)" in text and "nan" not in text and "| — |" in text
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    if experiment == "wizard_ffnn":
        assert comparison["mean_as_printed"].notna().any()
    else:
        assert "mean_as_printed" not in comparison
