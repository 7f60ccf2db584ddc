"""Loggers: TensorBoard event files read back through TensorBoard's own reader equal runs.csv."""

from __future__ import annotations

import pandas as pd
import pytest
from constants import SMOKE

from optbench.results import loggers

from conftest import run_cli, sweep_plan

# TensorBoard's own reader: these tests are skipped where tensorboard is not installed
EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


@pytest.mark.slow
def test_tensorboard_logs_equal_runs_csv(tmp_path, data_dir):
    out = tmp_path / "out"
    done = run_cli(
        "sweep",
        "optimizers=[sgd,adam]",
        "seeds=2",
        SMOKE,
        "logger=tensorboard",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    runs = pd.read_csv(out / "runs.csv")
    runs_dirs = sorted(
        p.relative_to(out / "tensorboard") for p in (out / "tensorboard").glob("*/*")
    )
    assert [str(p) for p in runs_dirs] == [f"{o}/seed_{s}" for o in ("adam", "sgd") for s in (0, 1)]
    for (optimizer, seed), run in runs.groupby(["optimizer", "seed"]):
        events = EventAccumulator(str(out / "tensorboard" / optimizer / f"seed_{seed}"))
        events.Reload()
        assert sorted(events.Tags()["scalars"]) == sorted(loggers.LOGGED)
        for metric in loggers.LOGGED:
            logged = [(e.step, e.value) for e in events.Scalars(metric)]
            expected = list(zip(run["step"], run[metric], strict=True))
            assert [s for s, _ in logged] == [s for s, _ in expected], metric
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


@pytest.mark.slow
def test_a_tensorboard_folder_outside_the_results_keeps_what_else_it_holds(tmp_path, data_dir):
    shared = tmp_path / "shared"
    (shared / "other_project").mkdir(parents=True)
    (shared / "other_project" / "events.keep").write_text("not optbench's")
    command = ("run", SMOKE, "logger=tensorboard", f"logger.dir={shared}")
    for _ in range(2):  # the same command again replaces its own run's logs only
        done = run_cli(*command, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert (shared / "other_project" / "events.keep").read_text() == "not optbench's"
    assert len(list((shared / "sgd" / "seed_0").glob("events.out.tfevents.*"))) == 1


def test_logger_none_writes_nothing_and_is_not_part_of_the_protocol(tmp_path):
    assert loggers.write_logs(tmp_path, {"name": "none"}, pd.DataFrame()) == []
    assert sweep_plan("logger=tensorboard").fingerprint == sweep_plan().fingerprint


@pytest.mark.slow
def test_mlflow_store_holds_every_run_equal_to_runs_csv_and_the_plots(tmp_path, data_dir):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    command = ("sweep", "optimizers=[sgd,adam]", "seeds=2", SMOKE, "logger=mlflow")
    for _ in range(2):  # the same command again replaces the folder's runs, adds none
        done = run_cli(*command, f"hydra.run.dir={out}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    runs = pd.read_csv(out / "runs.csv")
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wizard_ffnn")
    logged = client.search_runs([experiment.experiment_id])
    parents = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["optbench_run"]: r for r in logged if r not in parents}
    assert len(parents) == 1 and sorted(children) == [
        f"{o} seed {s}" for o in ("adam", "sgd") for s in (0, 1)
    ]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"test_accuracy.png", "costs.png", "report.html"} <= artifacts
    for (optimizer, seed), run in runs.groupby(["optimizer", "seed"]):
        child = children[f"{optimizer} seed {seed}"]
        assert child.data.params["hyperparameters"] == run["hyperparameters"].iloc[0]
        for metric in loggers.LOGGED:
            history = client.get_metric_history(child.info.run_id, metric)
            logged_values = sorted((m.step, m.value) for m in history)
            assert logged_values == list(zip(run["step"], run[metric], strict=True)), metric
