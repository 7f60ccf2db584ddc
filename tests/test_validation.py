"""The validation set: training examples held out (dataset.validation_size), a fixed and
stratified choice checked against a count by hand; the metrics on it checked against a
hand-written loop; protocols without one keep their fingerprints and their runs.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from constants import SMOKE
from omegaconf import OmegaConf

from optbench import models
from optbench.data.in_memory import _read, load, validation_split
from optbench.training import loop
from optbench.training.trainers import stream_seed

from conftest import ROOT, run_cli, run_plan

HELD_OUT = 2000


def test_the_split_is_stratified_fixed_disjoint_and_in_order(data_dir):
    labels = _read("mnist", Path(data_dir).resolve())[1]
    validation, training = validation_split(labels, HELD_OUT)
    assert len(validation) == HELD_OUT and len(training) == len(labels) - HELD_OUT
    together = np.concatenate([validation.numpy(), training.numpy()])
    assert sorted(together) == list(range(len(labels)))  # disjoint, and nothing lost
    assert (np.diff(validation.numpy()) > 0).all() and (np.diff(training.numpy()) > 0).all()
    # stratified: each class within one example of its exact share, counted by hand
    everyone = np.bincount(labels.numpy(), minlength=10)
    held = np.bincount(labels.numpy()[validation.numpy()], minlength=10)
    assert (np.abs(held - everyone * HELD_OUT / len(labels)) < 1).all()
    again, _ = validation_split(labels, HELD_OUT)
    assert torch.equal(validation, again)  # the same examples for every run and process


def test_the_validation_set_is_held_out_and_train_size_counts_the_rest(data_dir):
    plan = run_plan(f"dataset.validation_size={HELD_OUT}", SMOKE)
    tensors = load(plan.dataset, data_dir, torch.device("cpu"))
    images, labels = _read("mnist", Path(data_dir).resolve())[:2]
    validation, training = validation_split(labels, HELD_OUT)
    cut = plan.dataset["validation_eval_size"]  # smoke: the first 500 held out are evaluated
    assert cut == 500
    assert torch.equal(tensors.validation_y, labels[validation][:cut])
    assert torch.equal(tensors.validation_x, images[validation][:cut].unsqueeze(1).float() / 255)
    whole = load({**plan.dataset, "validation_eval_size": None}, data_dir, torch.device("cpu"))
    assert torch.equal(whole.validation_y, labels[validation])
    n = plan.dataset["train_size"]  # smoke: the first 1,000 of the examples not held out
    assert torch.equal(tensors.train_y, labels[training[:n]])
    assert plan.steps.steps_per_epoch == n // plan.train["batch_size"]


def test_validation_metrics_equal_a_hand_written_loop_on_the_held_out_examples(data_dir):
    """Plain tensors, F.linear, autograd, p -= lr * g; the validation metrics of the held
    out examples at every evaluation, beside the test metrics."""
    plan = run_plan("optimizer=sgd", "seeds=[3]", f"dataset.validation_size={HELD_OUT}", SMOKE)
    runs = loop.train(plan, progress=False)
    tensors = load(plan.dataset, data_dir, torch.device("cpu"))
    model = models.build_model(plan.model, plan.dataset, stream_seed(3, "init"))
    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]
    order = torch.Generator().manual_seed(stream_seed(3, "data_order"))
    lr, batch = plan.optimizers[0].lr, plan.train["batch_size"]

    def logits(x):
        w1, b1, w2, b2 = weights
        return F.linear(F.relu(F.linear(x.flatten(1), w1, b1)), w2, b2)

    steps, batches, expected = plan.steps, [], []
    for step in range(1, steps.total_steps + 1):
        if not batches:
            batches = list(torch.randperm(len(tensors.train_x), generator=order).split(batch))
        index = batches.pop(0)
        loss = F.cross_entropy(logits(tensors.train_x[index]), tensors.train_y[index])
        with torch.no_grad():
            for p, g in zip(weights, torch.autograd.grad(loss, weights), strict=True):
                p -= lr * g
        if step in steps.eval_steps:
            with torch.no_grad():
                out = logits(tensors.validation_x)
            accuracy = (out.argmax(1) == tensors.validation_y).double().mean().item()
            loss = F.cross_entropy(out, tensors.validation_y).item()
            expected.append({"validation_loss": loss, "validation_accuracy": accuracy})
    expected = pd.DataFrame(expected)
    for column in expected:
        np.testing.assert_allclose(runs[column], expected[column], rtol=1e-5, err_msg=column)
    assert not np.allclose(runs["validation_accuracy"], runs["test_accuracy"])


def test_a_stacked_run_measures_the_validation_set_as_a_lone_run(data_dir):
    overrides = ("optimizer=adam", "seeds=2", f"dataset.validation_size={HELD_OUT}", SMOKE)
    alone = loop.train(run_plan(*overrides), progress=False)
    stacked = loop.train(run_plan(*overrides, "stack_runs=always"), progress=False)
    for column in ("validation_loss", "validation_accuracy"):
        np.testing.assert_allclose(stacked[column], alone[column], rtol=1e-4, err_msg=column)


@pytest.mark.parametrize("experiment", ["wizard_ffnn", "examples_cnn", "simple_nn"])
def test_no_validation_set_keeps_the_committed_fingerprints(experiment):
    committed = OmegaConf.load(ROOT / "results" / experiment / "config.yaml")
    recorded = committed.provenance.protocol_fingerprint
    assert run_plan(f"experiment={experiment}").fingerprint == recorded
    assert run_plan(f"experiment={experiment}", "dataset.validation_size=0").fingerprint == recorded
    held_out = run_plan(f"experiment={experiment}", "dataset.validation_size=5000")
    assert held_out.fingerprint != recorded  # another protocol: never mixed with the first


def test_runs_csv_gains_the_validation_columns_only_with_a_validation_set(tmp_path, data_dir):
    for name, extra in (("plain", ()), ("held_out", (f"dataset.validation_size={HELD_OUT}",))):
        result = run_cli(
            "run", "seeds=2", SMOKE, *extra, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
    plain = pd.read_csv(tmp_path / "plain" / "runs.csv")
    held_out = pd.read_csv(tmp_path / "held_out" / "runs.csv")
    assert "validation_accuracy" not in plain and "validation_accuracy" in held_out
    columns = list(held_out.columns)
    assert columns[columns.index("test_accuracy") + 1 :][:2] == [
        "validation_loss",
        "validation_accuracy",
    ]
    summary = pd.read_csv(tmp_path / "held_out" / "summary.csv")
    assert {"validation_accuracy_mean", "validation_accuracy_ci_high"} <= set(summary.columns)
    assert summary["validation_accuracy_ci_high"].max() <= 1.0
    # the progress (a log line when the output is no terminal) names what it averages
    last = held_out[held_out.step == held_out.step.max()]
    shown = f"mean validation accuracy {last.validation_accuracy.mean():.4f} (test "
    assert (
        f"{shown}{last.test_accuracy.mean():.4f}) over 2 runs"
        in (tmp_path / "held_out" / "optbench.log").read_text()
    )
    assert "validation" not in (tmp_path / "plain" / "optbench.log").read_text()


@pytest.mark.parametrize(
    "value, shown",
    [("-1", "-1"), ("60000", "60000"), ("ten", "'ten'"), ("1.5", "1.5")],
)
def test_a_bad_validation_size_is_refused_before_training(tmp_path, value, shown):
    result = run_cli("run", SMOKE, f"dataset.validation_size={value}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"dataset.validation_size={shown}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs").exists()


def test_a_train_size_beyond_what_the_validation_set_leaves_is_refused(tmp_path):
    args = ("dataset.validation_size=10000", "dataset.train_size=55000")
    result = run_cli("run", SMOKE, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "dataset.train_size=55000" in result.stderr
    assert "from 1 to 50000" in result.stderr and "validation_size" in result.stderr


# ---------------------------------------------------------------------------------------
# Nothing chooses on the test set


def test_tuning_makes_the_same_choices_whatever_the_test_set(tmp_path):
    """The trials are chosen on a validation set (here the one optbench tune holds out for a
    protocol without one): another test subset changes the test columns and not a choice."""
    chosen = []
    for test_size in (200, 400):
        out = tmp_path / f"test{test_size}"
        result = run_cli(
            "tune",
            "optimizers=[sgd,adam]",
            "tuning.trials=3",
            SMOKE,
            f"dataset.test_size={test_size}",
            f"hydra.run.dir={out}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "holds out no validation set" in result.stderr + result.stdout
        trials = pd.read_csv(out / "tuning.csv")
        best = trials.loc[trials.groupby("optimizer")["final_validation_accuracy"].idxmax()]
        chosen.append((trials, best["name"].tolist()))
    (first, first_best), (second, second_best) = chosen
    assert first_best == second_best
    pd.testing.assert_series_equal(
        first["final_validation_accuracy"], second["final_validation_accuracy"]
    )
    assert not first["final_test_accuracy"].equals(second["final_test_accuracy"])


def test_targets_are_set_on_validation_accuracy_whatever_the_test_set(tmp_path):
    values = []
    for test_size in (200, 400):
        out = tmp_path / f"test{test_size}"
        result = run_cli(
            "targets",
            "workloads=[mnist_ffnn]",
            "optimizers=[adamw,nesterov]",
            "tuning.trials=2",
            "seeds=[100,101]",
            SMOKE,
            f"dataset.validation_size={HELD_OUT}",
            f"dataset.test_size={test_size}",
            f"hydra.sweep.dir={out}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "not written into the presets" in result.stdout  # another protocol
        values.append(pd.read_csv(out / "targets.csv"))
    pd.testing.assert_frame_equal(values[0], values[1])


def test_time_to_target_is_measured_on_the_validation_accuracy():
    from optbench.analysis import targets

    runs = pd.DataFrame(
        {
            "optimizer": "adam",
            "seed": 0,
            "step": [100, 200, 300],
            "epoch": [1, 2, 3],
            "grad_evals": [100, 200, 300],
            "wall_s": [1.0, 2.0, 3.0],
            "test_accuracy": [0.95, 0.96, 0.97],  # at the target from the first evaluation
            "validation_accuracy": [0.90, 0.92, 0.95],  # only at the last
            "diverged": False,
        }
    )
    times = targets.run_times(runs, 0.95)
    assert times["steps"].tolist() == [300]
    assert times["final_test_accuracy"].tolist() == [0.97]  # reported beside
    assert times["final_validation_accuracy"].tolist() == [0.95]
    value, medians = targets.derive(runs)
    assert value == 0.95 and medians == {"adam": 0.95}  # the best validation accuracy
    without = runs.drop(columns="validation_accuracy")  # runs from before validation sets
    assert targets.run_times(without, 0.95)["steps"].tolist() == [100]
