"""The rerun check (`optbench compare A B`): each verdict on folders written by optbench,
the p-values against Welch's formula computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from optbench import cli, commands, engine, rerun, results
from optbench.cli import main

from conftest import sweep_plan


@pytest.fixture(scope="module")
def original(data_dir, tmp_path_factory):
    """A real sweep: 2 optimizers x 4 seeds."""
    plan = sweep_plan(
        "optimizers=[sgd,adam]",
        "seeds=4",
        "dataset.train_size=600",
        "train.steps=12",
        "train.eval_every=6",
    )
    folder = tmp_path_factory.mktemp("original")
    results.write_results(folder, engine.train(plan, progress=False))
    return folder


def altered(original, tmp_path, change) -> tuple:
    """A copy of the original folder whose runs.csv went through change(runs)."""
    runs = results.read_runs(original)
    folder = tmp_path / "rerun"
    results.write_results(folder, change(runs.copy()))
    return folder


def final_accuracy(folder, optimizer: str) -> np.ndarray:
    runs = pd.read_csv(folder / results.RUNS_CSV)
    last = runs[(runs.optimizer == optimizer) & (runs.step == runs.step.max())]
    return last.sort_values("seed")["test_accuracy"].to_numpy()


def welch_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's t statistic and Welch–Satterthwaite degrees of freedom, two-sided p."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * scipy_stats.t.sf(abs(t), df)


def test_a_folder_against_itself_is_bit_identical(original, tmp_path, capsys):
    copy = altered(original, tmp_path, lambda runs: runs.assign(wall_s=runs["wall_s"] * 3))
    verdict = rerun.compare(original, copy)
    assert verdict.verdict == "bit-identical" and verdict.differing_runs == 0
    assert main(["compare", str(original), str(copy)]) == 0
    assert "BIT-IDENTICAL: all 8 runs" in capsys.readouterr().out


def test_last_digits_that_differ_are_consistent(original, tmp_path, capsys):
    rng = np.random.default_rng(0)

    def jitter(runs):
        noise = rng.normal(0, 0.002, len(runs))  # well inside the seeds' spread
        return runs.assign(test_accuracy=runs["test_accuracy"] + noise)

    copy = altered(original, tmp_path, jitter)
    verdict = rerun.compare(original, copy)
    assert verdict.verdict == "consistent" and verdict.differing_runs == 8
    table = verdict.table.set_index("optimizer")
    for name in ("sgd", "adam"):
        expected = welch_by_hand(final_accuracy(original, name), final_accuracy(copy, name))
        assert table.loc[name, "p"] == pytest.approx(expected, rel=1e-9)
    assert main(["compare", str(original), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "CONSISTENT" in out and "Welch's t-test" in out


def test_a_shifted_optimizer_is_inconsistent(original, tmp_path, capsys):
    def shift(runs):
        adam = runs["optimizer"] == "adam"
        return runs.assign(test_accuracy=runs["test_accuracy"] - 0.2 * adam)

    copy = altered(original, tmp_path, shift)
    verdict = rerun.compare(original, copy)
    assert verdict.verdict == "inconsistent"
    flagged = verdict.table.set_index("optimizer")["flagged"]
    assert flagged["adam"] and not flagged["sgd"]
    assert main(["compare", str(original), str(copy)]) == commands.EXIT_INCONSISTENT
    assert "INCONSISTENT: the final test accuracy of adam" in capsys.readouterr().out


def test_folders_of_different_protocols_are_refused(original, tmp_path, capsys):
    copy = altered(original, tmp_path, lambda runs: runs.assign(fingerprint="0123456789ab"))
    assert main(["compare", str(original), str(copy)]) == cli.EXIT_BAD_INPUT
    assert "different protocols" in capsys.readouterr().err
