"""The pure core: a composed config in, results on disk and a DataFrame out.

`benchmark` never reads sys.argv or changes directory; the CLI (cli.py) only composes the
config with Hydra and calls it, and the tests call it directly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from optbench import data, engine, plots, published, report, results, tuning
from optbench.checks import check_config
from optbench.config import hyperparameters, run_key, seed_list

log = logging.getLogger("optbench")


def prepare_data(cfg: DictConfig) -> None:
    """Check the config, then make sure its dataset is on disk: all before any training."""
    data.prepare(cfg.dataset.name, data.resolve_data_dir(cfg.data_dir), log=log.info)


def _train_and_record(
    cfg: DictConfig,
    trained_cfgs: list[DictConfig],
    recorded_cfgs: list[DictConfig] | None,
    out_dir: Path,
    overrides: list[str] | None,
    progress: bool,
) -> pd.DataFrame:
    """Check, prepare the data, train trained_cfgs and write runs.csv, summary.csv and
    config.yaml (listing recorded_cfgs, or with None every optimizer setting in the
    folder's runs); what comes after differs between sweep and tune.

    The runs already complete in out_dir are skipped (and kept), a checkpoint left there
    by this same job is resumed, and a folder of another protocol is refused."""
    check_config(cfg, trained_cfgs)
    prepare_data(cfg)
    out_dir = Path(out_dir)
    results.remove_temporaries(out_dir)
    if not cfg.resume and (aside := results.move_aside(out_dir)):
        log.info("resume=false: the folder's earlier results are now in %s", aside)
    schedule = engine.make_schedule(cfg.train, data.train_size(cfg.dataset))
    previous = results.previous_runs(out_dir, cfg, schedule.eval_steps)
    done = results.complete_runs(previous, schedule.total_steps)
    wanted = {
        run_key(o.name, hyperparameters(o), s) for o in trained_cfgs for s in seed_list(cfg.seeds)
    }
    if wanted <= done:
        log.info("All %d runs are already complete in %s; nothing to train.", len(wanted), out_dir)
        return previous
    if done & wanted:
        log.info("Skipping the %d runs already complete in %s.", len(done & wanted), out_dir)
    checkpoint = out_dir / results.CHECKPOINT
    provenance = results.provenance()  # the code as it was when training started
    provenance |= engine.layout(cfg, trained_cfgs)
    try:
        new = engine.train(cfg, trained_cfgs, progress=progress, skip=done, checkpoint=checkpoint)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (cli.Terminated)
        kept = [
            f"{path} keeps {what}"
            for path, what in (
                (out_dir / results.RUNS_CSV, "the complete runs"),
                (checkpoint, "the training state at the last evaluation point"),
            )
            if path.is_file()
        ]
        log.warning(
            "%s. %s: run the same command again to resume.",
            "Stopped by SIGTERM" if type(stop).__name__ == "Terminated" else "Interrupted",
            "; ".join(kept) or "Nothing was complete yet",
        )
        raise
    runs = results.merge_runs(previous, new)
    results.write_results(out_dir, runs)
    if recorded_cfgs is None:  # every setting the folder's runs were trained with
        recorded = results.optimizer_configs(runs)
    else:
        recorded = {o.name: OmegaConf.to_container(o, resolve=True) for o in recorded_cfgs}
    results.write_config(out_dir / results.CONFIG_YAML, cfg, recorded, overrides or [], provenance)
    checkpoint.unlink(missing_ok=True)
    return runs


def benchmark(
    cfg: DictConfig,
    optimizer_cfgs: list[DictConfig],
    out_dir: Path,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (optimizer, seed) run of cfg's protocol and write into out_dir:
    runs.csv, summary.csv, config.yaml, the comparison plots, ranking.csv/.md, report.md/.html
    and, for a preset with published numbers, comparison.csv/.md. Returns the runs."""
    with results.exclusive(out_dir):
        runs = _train_and_record(cfg, optimizer_cfgs, None, out_dir, overrides, progress)
        write_analysis(Path(out_dir), runs)
    log.info("Results in %s", Path(out_dir).resolve())
    return runs


def write_analysis(out_dir: Path, runs: pd.DataFrame, draw_plots: bool = True) -> list[Path]:
    """Everything derived from runs.csv: the published comparison (for presets that have
    published numbers), the paired ranking, the plots (unless draw_plots is False) and the
    report."""
    written = published.write_comparison(out_dir, runs)
    written += results.write_ranking(out_dir, runs)
    if draw_plots:
        written += plots.plot_all(out_dir)
    written += report.write_report(out_dir)
    return written


def tune(
    cfg: DictConfig,
    optimizer_cfgs: list[DictConfig],
    out_dir: Path,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Random search with the same number of trials (cfg.tuning.trials) for every optimizer,
    all trained in one step loop; writes runs.csv, summary.csv, config.yaml, the tuning
    tables and curve (tuning.*) and the report. Returns the runs."""
    check_config(cfg, optimizer_cfgs)
    trial_cfgs, drawn = tuning.sample_trials(optimizer_cfgs, cfg.tuning.trials, cfg.tuning.seed)
    with results.exclusive(out_dir):
        runs = _train_and_record(cfg, trial_cfgs, optimizer_cfgs, out_dir, overrides, progress)
        tuning.write_tuning(Path(out_dir), runs, drawn)
        report.write_report(Path(out_dir))
    log.info("Results in %s", Path(out_dir).resolve())
    return runs
