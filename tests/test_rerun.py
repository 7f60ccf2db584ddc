"""The rerun check (`optbench compare A B`): each verdict on folders written by optbench,
the p-values against Welch's formula computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from optbench import cli, commands
from optbench.cli import main
from optbench.results import store
from optbench.training import loop

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
    store.write_results(folder, loop.train(plan, progress=False))
    return folder


def altered(original, tmp_path, change) -> tuple:
    """A copy of the original folder whose runs.csv went through change(runs)."""
    runs = store.read_runs(original)
    folder = tmp_path / "rerun"
    store.write_results(folder, change(runs.copy()))
    return folder


def final_accuracy(folder, optimizer: str) -> np.ndarray:
    runs = pd.read_csv(folder / store.RUNS_CSV)
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
    verdict = commands.rerun_verdict(original, copy)
    assert verdict.verdict == "bit-identical" and verdict.differing_runs == 0
    assert main(["compare", str(original), str(copy)]) == 0
    assert "BIT-IDENTICAL: all 8 runs" in capsys.readouterr().out


def test_last_digits_that_differ_are_consistent(original, tmp_path, capsys):
    rng = np.random.default_rng(0)

    def jitter(runs):
        noise = rng.normal(0, 0.002, len(runs))  # well inside the seeds' spread
        return runs.assign(test_accuracy=runs["test_accuracy"] + noise)

    copy = altered(original, tmp_path, jitter)
    verdict = commands.rerun_verdict(original, copy)
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
    verdict = commands.rerun_verdict(original, copy)
    assert verdict.verdict == "inconsistent"
    flagged = verdict.table.set_index("optimizer")["flagged"]
    assert flagged["adam"] and not flagged["sgd"]
    assert main(["compare", str(original), str(copy)]) == commands.EXIT_INCONSISTENT
    assert "INCONSISTENT: the final test accuracy of adam" in capsys.readouterr().out


def test_folders_of_different_protocols_are_refused(original, tmp_path, capsys):
    copy = altered(original, tmp_path, lambda runs: runs.assign(fingerprint="0123456789ab"))
    assert main(["compare", str(original), str(copy)]) == cli.EXIT_BAD_INPUT
    assert "different protocols" in capsys.readouterr().err


def test_one_seed_a_side_cannot_be_tested(original, tmp_path, capsys):
    """One seed per folder and numbers that differ: Welch's test needs two values a side,
    so the verdict is "cannot test" with its own exit code, never CONSISTENT."""
    one_seed = altered(original, tmp_path, lambda runs: runs[runs["seed"] == 0])
    other = tmp_path / "other"
    store.write_results(
        other,
        store.read_runs(one_seed).pipe(lambda r: r.assign(test_accuracy=r["test_accuracy"] / 2)),
    )
    verdict = commands.rerun_verdict(one_seed, other)
    assert verdict.verdict == "cannot test"
    assert verdict.untestable == ["sgd", "adam"] and verdict.table["p"].isna().all()
    assert main(["compare", str(one_seed), str(other)]) == commands.EXIT_CANNOT_TEST
    out = capsys.readouterr().out
    assert "CANNOT TEST: sgd, adam have fewer than 2 finite final test accuracies" in out
    assert "CONSISTENT" not in out and "nan" not in out


def test_every_run_diverged_on_one_side_cannot_be_tested(original, tmp_path, capsys):
    def diverge_adam(runs):
        adam = runs["optimizer"] == "adam"
        runs.loc[adam, ["train_loss", "last_batch_loss", "test_loss", "test_accuracy"]] = math.nan
        return runs.assign(diverged=runs["diverged"] | adam)

    copy = altered(original, tmp_path, diverge_adam)
    verdict = commands.rerun_verdict(original, copy)
    assert verdict.verdict == "cannot test" and verdict.untestable == ["adam"]
    assert main(["compare", str(original), str(copy)]) == commands.EXIT_CANNOT_TEST
    out = capsys.readouterr().out
    assert "adam" in out.split("CANNOT TEST:")[1] and "(n=0)" in out


def test_runs_only_in_one_folder_are_named_and_the_header_follows_the_arguments(
    original, tmp_path, capsys
):
    fewer = altered(original, tmp_path, lambda runs: runs[runs["seed"] < 2])
    assert main(["compare", str(fewer), str(original)]) == 0
    out = capsys.readouterr().out
    assert out.index(str(fewer)) < out.index(str(original))  # first argument named first
    assert f"Only in {original}, so not compared run by run: sgd seeds 2-3; adam seeds 2-3" in out
    assert "BIT-IDENTICAL: the 4 runs both folders hold" in out


def test_different_protocols_name_the_keys_that_differ(data_dir, tmp_path, capsys):
    from optbench.results import provenance

    folders = []
    for steps in (8, 12):
        plan = sweep_plan(
            "optimizers=[sgd]",
            "seeds=1",
            "dataset.train_size=300",
            f"train.steps={steps}",
            "train.eval_every=4",
        )
        folder = tmp_path / f"steps{steps}"
        store.write_results(folder, loop.train(plan, progress=False))
        provenance.write_config(folder / provenance.CONFIG_YAML, plan, {}, [])
        folders.append(folder)
    assert main(["compare", *map(str, folders)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "different protocols" in err and "train.steps" in err and "Traceback" not in err
