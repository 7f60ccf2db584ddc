"""The core: a Plan in, results on disk and a DataFrame out.

`benchmark` and `tune` never read sys.argv or change directory; the CLI only makes the
plan (compose/jobs.py) and calls them, and the tests call them directly.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from optbench import files, labels
from optbench.analysis import stats
from optbench.data import prepare
from optbench.plan import OptimizerSpec, Plan, RunSpec
from optbench.report import answer
from optbench.results import checksums, loggers, provenance, store
from optbench.training import checkpoints, costs, loop, lr_schedules

# The analysis modules (plots, report, published, tuning) are imported where they are used:
# matplotlib, SciPy and Optuna are slow to import (docs/speed.md), and every command would
# otherwise spend that before its first training step.

log = logging.getLogger("optbench")


def benchmark(
    plan: Plan, out_dir: Path, overrides: list[str] | None = None, progress: bool = True
) -> pd.DataFrame:
    """Train every (optimizer, seed) run of the plan and write into out_dir: runs.csv,
    summary.csv, config.yaml, costs.csv, the comparison plots, ranking.csv/.md,
    report.md/.html and, for a preset with published numbers, comparison.csv/.md. Returns
    the runs."""
    out_dir = Path(out_dir)
    with files.exclusive(out_dir):
        runs, summary = _train_and_record(plan, plan.optimizers, None, out_dir, overrides, progress)
        costs_table = costs.write_costs(out_dir, plan, labels.optimizer_configs(runs))
        ranked = stats.rankings(runs)
        written = write_analysis(
            out_dir, runs, ranked=ranked, summary=summary, costs_table=costs_table
        )
        _finish(plan, out_dir, runs, written)
        loggers.write_logs(out_dir, plan.logger, runs)
    ranking, _ = ranked.get("", (None, None))  # a job has one protocol
    answer.log_final_table(summary, ranking)
    _say_where(out_dir)
    return runs


def tune(
    plan: Plan, out_dir: Path, overrides: list[str] | None = None, progress: bool = True
) -> pd.DataFrame:
    """Random search with the same number of trials (tuning.trials) for every optimizer of
    the plan, all trained in one step loop; writes runs.csv, summary.csv, config.yaml, the
    tuning tables and curve (tuning.*) and the report. Returns the runs."""
    from optbench.analysis import tuning
    from optbench.report import report
    from optbench.report import tuning as tuning_report

    out_dir = Path(out_dir)
    plan = _choosing_on_validation(plan)
    trials, drawn = tuning.sample_trials(
        plan.optimizers,
        plan.tuning["trials"],
        plan.tuning["seed"],
        plan.lr_schedule,
        plan.steps.total_steps,
    )
    with files.exclusive(out_dir):
        runs, summary = _train_and_record(
            plan, trials, plan.optimizers, out_dir, overrides, progress
        )
        written = tuning_report.write_tuning(out_dir, runs, drawn)
        written += report.write_report(out_dir, runs=store.as_written(runs), summary=summary)
        _finish(plan, out_dir, runs, written)
        loggers.write_logs(out_dir, plan.logger, runs)
    answer.log_final_table(summary)  # each optimizer's best trial
    _say_where(out_dir)
    return runs


def _choosing_on_validation(plan: Plan) -> Plan:
    """The plan of tuning trials: its runs evaluated on a validation set, the protocol's own
    or one held out for the choice (said in the log), never on the test set alone."""
    chosen_on = plan.choosing_on_validation()
    if chosen_on is not plan:
        log.info(
            "The protocol holds out no validation set: the trials hold out %d training examples "
            "(dataset.validation_size=%d, a fixed stratified choice) and are chosen on them.",
            chosen_on.dataset["validation_size"],
            chosen_on.dataset["validation_size"],
        )
    return chosen_on


def workload(
    plan: Plan, out_dir: Path, overrides: list[str] | None = None, progress: bool = True
) -> pd.DataFrame:
    """One workload of `optbench suite` (or `targets`): benchmark its optimizers over its
    seeds. Where the plan has tuning trials (tuning.trials=K on the command line), each
    optimizer is first tuned with K random-search trials on a seed none of the runs uses,
    one past the largest (into <out_dir>_tuning/), and its best trial's setting then trains
    every seed, under the optimizer's own name."""
    if plan.tuning["trials"] is not None:
        from optbench.analysis import tuning

        trials_dir = Path(out_dir).with_name(f"{Path(out_dir).name}_tuning")
        tuning_seed = [max(plan.seeds) + 1]
        trial_runs = tune(replace(plan, seeds=tuning_seed), trials_dir, overrides, progress)
        plan = replace(plan, optimizers=tuning.best_settings(trial_runs, plan.optimizers))
    return benchmark(plan, out_dir, overrides, progress)


def _train_and_record(
    plan: Plan,
    trained: list[OptimizerSpec],
    recorded: list[OptimizerSpec] | None,
    out_dir: Path,
    overrides: list[str] | None,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prepare the data, train the runs of `trained` that out_dir does not hold complete
    yet, and write runs.csv, summary.csv and config.yaml (listing `recorded`, or with None
    every optimizer setting in the folder's runs); return the runs and their summary. What
    comes after differs between benchmark and tune.

    A checkpoint left in out_dir by this same job is resumed, and a folder of another
    protocol is refused (store.previous_runs), as is a config.yaml edited by hand. With
    nothing to train, summary.csv is written again from runs.csv, and config.yaml too
    where it is missing or was not written for this runs.csv (a job stopped at its end)."""
    prepare.prepare_dataset(plan.dataset, plan.data_dir, log=log.info)
    for note in lr_schedules.notes(plan.lr_schedule, trained):
        log.warning(note)
    files.remove_temporaries(out_dir)
    if not plan.resume and (aside := files.move_aside(out_dir)):
        log.info("resume=false: the folder's earlier results are now in its %s/", aside.name)
    step_plan = plan.steps
    previous = store.previous_runs(out_dir, plan, step_plan.eval_steps)
    config_is_current = checksums.config_is_current(out_dir)  # refuses one edited by hand
    done = store.complete_runs(previous, step_plan.total_steps)
    wanted = [RunSpec(optimizer, seed) for optimizer in trained for seed in plan.seeds]
    todo = [run for run in wanted if run.key not in done]
    produced_by = provenance.environment() | loop.layout(plan, trained)  # as training starts
    if todo:
        if len(todo) < len(wanted):
            log.info(
                "Skipping the %d runs already complete in the folder.", len(wanted) - len(todo)
            )
        runs = store.merge_runs(previous, _train(plan, todo, out_dir, progress))
        summary = store.write_results(out_dir, runs)
    else:
        log.info("All %d runs are already complete in the folder; nothing to train.", len(wanted))
        runs = previous
        summary = store.write_summary(out_dir, runs)
        if config_is_current:
            return runs, summary
        log.info(
            "Writing %s again: it was missing or not written for runs.csv.", provenance.CONFIG_YAML
        )
        produced_by["written_without_training"] = True
    if recorded is None:  # every setting the folder's runs were trained with
        optimizer_configs = labels.optimizer_configs(runs)
    else:
        optimizer_configs = {spec.name: spec.config for spec in recorded}
    config_yaml = out_dir / provenance.CONFIG_YAML
    provenance.write_config(config_yaml, plan, optimizer_configs, overrides or [], produced_by)
    return runs, summary


def _say_where(out_dir: Path) -> None:
    """The folder's path, on the terminal only: the log in it names no path of this machine
    (a results folder is committed and shared; paths inside it are relative to it)."""
    print(f"Results in {out_dir.resolve()}")


def _train(plan: Plan, todo: list[RunSpec], out_dir: Path, progress: bool) -> pd.DataFrame:
    """Train the runs, resuming and saving the folder's checkpoint; on Ctrl-C or SIGTERM,
    say what is kept."""
    checkpoint = out_dir / store.CHECKPOINT
    try:
        return loop.train(plan, todo, progress=progress, checkpoint=checkpoint)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (cli.Terminated)
        _say_what_is_kept(out_dir, checkpoint, stop)
        raise


def _finish(plan: Plan, out_dir: Path, runs: pd.DataFrame, written: list[Path]) -> None:
    """The last writes of a job: the checksums of runs.csv and of every file derived from it
    (which say the folder is complete), then the checkpoint, now spent, removed."""
    derived = [out_dir / store.SUMMARY_CSV, out_dir / provenance.CONFIG_YAML, *written]
    checksums.write(out_dir, derived)
    checkpoint = out_dir / store.CHECKPOINT
    complete = store.complete_runs(runs, plan.steps.total_steps)
    if checkpoints.is_spent(checkpoint, plan.fingerprint, complete):
        checkpoint.unlink()


def _say_what_is_kept(out_dir: Path, checkpoint: Path, stop: KeyboardInterrupt) -> None:
    kept = [
        f"{path.name} keeps {what}"  # in the folder: the log names no path of the machine
        for path, what in (
            (out_dir / store.RUNS_CSV, "the complete runs"),
            (checkpoint, "the training state at the last evaluation point"),
        )
        if path.is_file()
    ]
    log.warning(
        "%s. %s: run the same command again to resume.",
        "Stopped by SIGTERM" if type(stop).__name__ == "Terminated" else "Interrupted",
        "; ".join(kept) or "Nothing was complete yet",
    )


def write_analysis(
    out_dir: Path,
    runs: pd.DataFrame,
    draw_plots: bool = True,
    ranked: dict | None = None,
    summary: pd.DataFrame | None = None,
    costs_table: pd.DataFrame | None = None,
) -> list[Path]:
    """Everything derived from runs.csv: the published comparison (for presets that have
    published numbers), the paired ranking (stats.rankings, computed unless given), the
    plots (unless draw_plots is False) and the report. The runs are those just written into
    runs.csv, and summary and costs_table, where given, summary.csv's and costs.csv's: each
    is computed once and passed on, none read back."""
    from optbench.analysis import published
    from optbench.report import plots, ranking, report

    runs = store.as_written(runs)
    compared = published.comparisons(runs)
    ranked = stats.rankings(runs) if ranked is None else ranked
    written = published.write_comparison(out_dir, runs, compared)
    written += ranking.write_ranking(out_dir, runs, ranked=ranked)
    if draw_plots:
        written += plots.plot_all(out_dir, raw=runs, costs=costs_table, summary=summary)
    table, _ = ranked.get("", (None, None))  # ranking.csv's, where one was written
    written += report.write_report(
        out_dir,
        runs=runs,
        summary=summary,
        ranking=None if table is None else table.reset_index(drop=True),
        comparisons=compared,
        costs=costs_table,
    )
    return written
