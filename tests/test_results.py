"""Result files: summary.csv against NumPy, atomic writes, and combining multirun jobs."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from optbench import errors, files, labels
from optbench.results import multirun, store
from optbench.training import loop

from conftest import ROOT, sweep_plan


@pytest.fixture(scope="module")
def real_runs(data_dir) -> pd.DataFrame:
    plan = sweep_plan(
        "optimizers=[sgd,adam]",
        "seeds=3",
        "dataset.train_size=600",
        "train.steps=12",
        "train.eval_every=4",
    )
    return loop.train(plan, progress=False)


def test_summary_csv_equals_numpy_on_runs_csv(real_runs, tmp_path):
    store.write_results(tmp_path, real_runs)
    runs = pd.read_csv(tmp_path / "runs.csv")
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 * 3  # optimizers x evaluation steps
    for row in summary.itertuples():
        values = runs[(runs.optimizer == row.optimizer) & (runs.step == row.step)]
        assert row.n == len(values) == 3
        for metric in store.SUMMARIZED:
            column = values[metric].to_numpy()
            assert getattr(row, f"{metric}_mean") == pytest.approx(np.mean(column), rel=1e-12)
            assert getattr(row, f"{metric}_std") == pytest.approx(np.std(column, ddof=1), rel=1e-9)
    assert summary.optimizer.tolist() == ["sgd"] * 3 + ["adam"] * 3  # the sweep's order


def test_runs_csv_has_the_contracted_columns(real_runs, tmp_path):
    store.write_results(tmp_path, real_runs)
    columns = pd.read_csv(tmp_path / "runs.csv").columns
    for name in [
        "optimizer",
        "seed",
        "step",
        "epoch",
        "current_lr",
        "train_loss",
        "last_batch_loss",
        "test_loss",
        "test_accuracy",
        "wall_s",
    ]:
        assert name in columns


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "runs.csv"
    target.write_text("old complete contents\n")

    def write_half_then_fail(tmp):
        tmp.write_text("half a ro")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, write_half_then_fail)
    assert target.read_text() == "old complete contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]


def with_setting(runs: pd.DataFrame, **changed) -> list[str]:
    """The runs' hyperparameters column as it reads with some hyperparameters changed."""
    return [
        json.dumps(json.loads(text) | changed, sort_keys=True, separators=(",", ":"))
        for text in runs["hyperparameters"]
    ]


def test_combining_jobs_tells_apart_the_same_optimizer_with_other_hyperparameters(
    real_runs, tmp_path
):
    sgd = real_runs[real_runs.optimizer == "sgd"]
    for job, momentum in ((0, 0.9), (1, 0.5)):
        runs = sgd.assign(hyperparameters=with_setting(sgd, momentum=momentum))
        store.write_results(tmp_path / str(job), runs)
        OmegaConf.save(
            {"provenance": {"overrides": ["seeds=3", f"optimizer.momentum={momentum}"]}},
            tmp_path / str(job) / "config.yaml",
        )
    combined = multirun.combine_jobs(tmp_path)
    labelled = labels.label_settings(combined)
    assert sorted(labelled.optimizer.unique()) == ["sgd momentum=0.5", "sgd momentum=0.9"]
    assert len(combined) == 2 * len(sgd)


def test_combining_jobs_pools_settings_outside_the_protocol(real_runs, tmp_path):
    """Seeds, threads, stacking, resuming and TF32 do not change what a run is: the jobs'
    rows keep the plain optimizer name, pooled."""
    sgd = real_runs[real_runs.optimizer == "sgd"]
    seeds = sorted(sgd.seed.unique())
    settings = (["threads=1", "stack_runs=always"], ["allow_tf32=true", "resume=false"])
    for job, (seed, overrides) in enumerate(zip(seeds, settings, strict=False)):
        store.write_results(tmp_path / str(job), sgd[sgd.seed == seed])
        OmegaConf.save(
            {"provenance": {"overrides": [f"seeds=[{seed}]", *overrides]}},
            tmp_path / str(job) / "config.yaml",
        )
    combined = multirun.combine_jobs(tmp_path)
    assert combined.optimizer.unique().tolist() == ["sgd"]
    assert sorted(combined.seed.unique()) == seeds[:2]


def test_an_optimizer_with_several_learning_rates_gets_one_label_per_rate(real_runs):
    sgd = real_runs[real_runs.optimizer == "sgd"]
    slower = sgd.assign(lr=0.01, hyperparameters=with_setting(sgd, lr=0.01))
    both = pd.concat([sgd, slower], ignore_index=True)
    labelled = labels.label_settings(both)
    assert sorted(labelled.optimizer.unique()) == ["sgd lr=0.01", "sgd lr=0.1"]
    summary = store.summarize(both)
    assert sorted(summary.optimizer.unique()) == ["sgd lr=0.01", "sgd lr=0.1"]
    assert (summary.n == 3).all()
    assert labels.label_settings(real_runs).optimizer.tolist() == real_runs.optimizer.tolist()


def test_combining_jobs_of_different_optimizers_keeps_their_names(real_runs, tmp_path):
    for job, name in enumerate(["sgd", "adam"]):
        store.write_results(tmp_path / str(job), real_runs[real_runs.optimizer == name])
        OmegaConf.save(
            {"provenance": {"overrides": [f"optimizer={name}"]}},
            tmp_path / str(job) / "config.yaml",
        )
    combined = multirun.combine_jobs(tmp_path)
    assert combined.optimizer.unique().tolist() == ["sgd", "adam"]
    assert multirun.combine_jobs(tmp_path / "empty") is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda runs: runs.drop(columns=["hyperparameters"]), "no column hyperparameters"),
        (lambda runs: pd.concat([runs, runs.iloc[[3]]]), "line 20 repeats line 5"),
        (lambda runs: runs.iloc[:-1], "lacks its evaluations at step 12"),
        (
            lambda runs: runs.assign(test_accuracy=runs.test_accuracy.mask(runs.index == 6)),
            r"line 8 \(optimizer sgd, seed 0, step 8\) has no test_accuracy but is not marked",
        ),
    ],
    ids=[
        "an earlier optbench's columns",
        "a repeated row",
        "a run missing a row",
        "a missing accuracy in a run not diverged",
    ],
)
def test_a_damaged_runs_csv_is_refused_with_its_line(real_runs, tmp_path, damage, message):
    damage(real_runs).to_csv(tmp_path / "runs.csv", index=False)
    before = (tmp_path / "runs.csv").read_bytes()
    with pytest.raises(errors.ResultsError, match=message):
        store.read_runs(tmp_path)
    assert (tmp_path / "runs.csv").read_bytes() == before


def test_plots_keep_their_axis_labels(real_runs):
    """The y label names the metric, whatever the legend says (it once took the last
    optimizer's legend entry)."""
    import matplotlib.pyplot as plt

    from optbench.report import plots

    figure = plots.curve_figure(store.summarize(real_runs), "test_loss", "test loss", "title")
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("optimizer step", "test loss")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["sgd", "adam"]
    plt.close(figure)


# An absolute path of a machine: one of the usual roots of home and work folders, after a
# space, quote, bracket or the start of a line (not inside a URL or a relative path).
MACHINE_PATH = re.compile(rb"(?<![\w.~/:-])/(?:work|tmp|home|root|Users|mnt|scratch|srv|opt|var)/")


def test_no_committed_result_names_a_path_of_the_machine_that_made_it():
    """Results are shared: their logs, multirun.yaml, workloads.csv and reports name paths
    relative to the checkout or to the results folder, never an absolute one."""
    assert MACHINE_PATH.search(b"not on disk under /work/main/data and")  # the check can fail
    assert MACHINE_PATH.search(b"    cwd: /home/someone/optbench")
    assert not MACHINE_PATH.search(b"results/work/x and file://work/ and ms / step")
    listed = subprocess.run(
        ["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(listed) > 100  # every committed results file, PNGs included
    this_machine = {str(ROOT), str(Path.home()), tempfile.gettempdir()} - {"/"}
    found = []
    for name in listed:
        content = (ROOT / name).read_bytes()
        hits = [m.group().decode() for m in MACHINE_PATH.finditer(content)]
        hits += [prefix for prefix in this_machine if prefix.encode() + b"/" in content]
        found += [f"{name}: {hit}" for hit in hits]
    assert found == []
