"""The `optbench` command: a thin shell around optbench.benchmark.

    optbench run [OVERRIDES]      one optimizer over seeds (a Hydra app: -m, --cfg job, --help)
    optbench sweep [OVERRIDES]    every optimizer of the experiment in one job
    optbench tune [OVERRIDES]     the same random-search budget for every optimizer
    optbench suite [OVERRIDES]    every workload x optimizer x seed, profiles, aggregates
    optbench targets [OVERRIDES]  derive each workload's target into its preset
    optbench plot RESULTS_DIR     redraw every plot from the files on disk
    optbench compare RESULTS_DIR  ranking, published numbers beside ours, report
    optbench data prepare NAME    put a dataset on disk in torchvision's layout
    optbench optimizers           every optimizer a config can name, and how it trains

This module parses the command line and calls the core: compose/jobs.py composes and checks
the jobs before Hydra starts them, benchmark.py trains and writes. `train` is a training
command's whole path, which optbench.api (optbench.run, sweep, ...) calls too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from optbench.compose.jobs import (
    COMMANDS,
    Plans,
    check_command_line,
    job_key,
    make_plan,
)
from optbench.config.schema import CONFIG_NAME, CONFIG_PACKAGE
from optbench.errors import ConfigError, ResourceError
from optbench.files import check_writable

USAGE = """\
usage: optbench COMMAND [ARGS]     (optbench --version: optbench's and torch's versions)

Benchmark PyTorch optimizers over many seeds.

commands:
  run [OVERRIDES]          train one optimizer over several seeds
                           e.g. optbench run optimizer=adam seeds=5
                                optbench run -m optimizer=sgd,adam   (Hydra multirun)
                                optbench run --help                  (config groups, options)
  sweep [OVERRIDES]        train every optimizer of the experiment in one job
                           e.g. optbench sweep seeds=5
                                optbench sweep experiment=examples_cnn optimizers=[sgd,adam]
  tune [OVERRIDES]         equal tuning budgets: tuning.trials random-search trials of
                           lr (and momentum/betas) per optimizer of the experiment, then
                           the expected best accuracy against the number of trials
                           e.g. optbench tune optimizers=[sgd,adam] tuning.trials=16
  suite [OVERRIDES]        every workload x optimizer x seed (3 seeds unless seeds=N), then
                           time-to-target, performance profiles, robust aggregates and
                           suite.html; workloads=[...] chooses the workloads, time=steps|
                           grad_evals|seconds the profiles' headline, track=defaults|tuned|
                           both: as shipped, tuned with 8 trials each, or the two side by
                           side (tracks.html)
                           e.g. optbench suite seeds=2 debug=smoke
                                optbench suite track=both seeds=5
  targets [OVERRIDES]      derive each workload's target from the reference optimizers
                           (adamw, nadam, nesterov, momentum; each tuned with 8 trials,
                           then seeds 100-104) into its preset
  plot RESULTS_DIR... [--x step|epoch|grad_evals|wall_s] [--out DIR] [--allow-mixed]
                           redraw every plot from RESULTS_DIR/runs.csv; several folders
                           are combined into --out (never two protocols, unless
                           --allow-mixed)
  compare RESULTS_DIR... [--out DIR] [--allow-mixed]
                           rank the optimizers with paired tests (ranking.csv, .md), set
                           the tutorial's published numbers beside ours (comparison.csv,
                           .md: wizard_ffnn, examples_cnn) and write report.md/.html
  compare A B              does B reproduce A? bit-identical, consistent (last digits
                           differ, no optimizer significantly), inconsistent (exit 1)
                           or cannot test (exit 3: too few runs a side)
  data prepare NAME...     put datasets on disk (mnist, fashion_mnist, cifar10)
                           in data_dir (default: $OPTBENCH_DATA_DIR, else data/ of the checkout)
  optimizers [--markdown]  every optimizer optimizer=NAME takes: torch.optim's, optbench's
                           and pytorch_optimizer's registry (pto_NAME where optbench has a
                           config NAME), whether its runs train stacked or alone, what it needs

Results go to outputs/<experiment>/<overrides>/ unless hydra.run.dir=DIR is given. The
same command again skips the runs already complete there and resumes an interrupted job
from its last evaluation point; resume=false moves the old results aside first.
"""

EXIT_BAD_INPUT = 2
EXIT_RESOURCE = 74  # sysexits' EX_IOERR: a resource failed (a full disk), not the input
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
EXIT_TERMINATED = 143  # the shell's code for SIGTERM (what SLURM sends at a time limit)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the job stops at once and resumes from its checkpoint."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


# ---------------------------------------------------------------------------------------
# The Hydra app: one job of `run`, `sweep` or `tune`


class JobFailed(BaseException):
    """A job's ConfigError or ResourceError, carried out of Hydra: Hydra turns a job's
    Exception into a traceback and exit code 1, but lets a BaseException pass (as it does
    SystemExit). `train` raises the error itself again."""

    def __init__(self, error: ConfigError | ResourceError):
        super().__init__(error)
        self.error = error


def hydra_app(command: str, plans: Plans, progress: bool = True, folders: list | None = None):
    """The Hydra app of a training command: Hydra parses the command line (overrides, -m,
    --cfg, --help), sets up the job's folder and log, and calls the job with its plan (from
    `plans`, which check_command_line made; a job it could not foresee makes its own).
    Each job's folder is appended to `folders` when one is given."""

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=CONFIG_NAME)
    def app(cfg: DictConfig) -> None:
        from optbench import benchmark

        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        out_dir = Path(hydra_cfg.runtime.output_dir)
        try:
            plan = plans.get(job_key(overrides)) or make_plan(command, cfg, overrides)
            job = {
                "tune": benchmark.tune,
                "suite": benchmark.workload,
                "targets": benchmark.workload,
            }
            job.get(command, benchmark.benchmark)(plan, out_dir, overrides, progress)
        except (ConfigError, ResourceError) as error:  # another protocol's folder, a full disk
            _discard_if_empty(out_dir)
            raise JobFailed(error) from None
        if folders is not None:
            folders.append(out_dir)

    return app


def _run_hydra_app(command: str, args: list[str], app) -> None:
    """Run a Hydra app on the command line `optbench COMMAND ARGS` (Hydra parses sys.argv);
    a job's error is raised again as itself."""
    argv = sys.argv
    sys.argv = [f"optbench {command}", *args]  # what Hydra parses
    try:
        app()
    except JobFailed as failed:
        raise failed.error from None
    finally:
        sys.argv = argv


class CombineMultirun(Callback):
    """At the end of a Hydra multirun: one runs.csv, summary.csv and set of plots for all
    jobs, and their checksums (configs/config.yaml names this callback). The same multirun
    again writes them all afresh, so one stopped while combining is repaired."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from optbench.benchmark import write_analysis
        from optbench.results import checksums, multirun, store

        sweep_dir = Path(config.hydra.sweep.dir)
        _drop_working_directory(sweep_dir / "multirun.yaml")
        try:  # Hydra turns a callback's exception into a warning: exit here instead
            combined = multirun.combine_jobs(sweep_dir)
            if combined is None:
                return
            summary = store.write_results(sweep_dir, combined)
            written = write_analysis(sweep_dir, combined, summary=summary)
            checksums.write(sweep_dir, [sweep_dir / store.SUMMARY_CSV, *written])
        except ConfigError as error:  # e.g. one run in two job folders
            print(
                f"optbench: error: the jobs' results cannot be combined: {error}", file=sys.stderr
            )
            sys.exit(EXIT_BAD_INPUT)
        except ResourceError as error:
            print(f"optbench: error: {error.strerror}", file=sys.stderr)
            sys.exit(EXIT_RESOURCE)
        print(f"optbench: combined results of all jobs in {sweep_dir.resolve()}")


def _drop_working_directory(multirun_yaml: Path) -> None:
    """Take hydra.runtime.cwd, the absolute working directory, out of the multirun.yaml
    Hydra wrote: a results folder is shared and committed, and names no path of the machine
    that made it."""
    from omegaconf import OmegaConf

    from optbench.files import atomic_write

    if not multirun_yaml.is_file():
        return
    config = OmegaConf.load(multirun_yaml)
    runtime = OmegaConf.select(config, "hydra.runtime")
    if runtime is not None and "cwd" in runtime:
        del runtime["cwd"]
        atomic_write(multirun_yaml, lambda tmp: OmegaConf.save(config, tmp))


def _discard_if_empty(folder: Path) -> None:
    """Remove a job's folder that holds nothing but the empty log Hydra opened in it."""
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if [e.name for e in entries] == ["optbench.log"] and entries[0].stat().st_size == 0:
        with contextlib.suppress(OSError):  # e.g. a mount point: it stays
            entries[0].unlink()
            folder.rmdir()


# ---------------------------------------------------------------------------------------
# Entry point


def train(command: str, args: list[str], progress: bool = True) -> list[Path]:
    """`optbench COMMAND ARGS` for a command that trains (run, sweep, tune, suite,
    targets): every job checked before any starts, then trained and written. Returns the
    folders written (one a job; a suite's or targets' own folder). Raises ConfigError for
    bad input and ResourceError for a failing resource, each with the message the command
    prints; KeyboardInterrupt (Ctrl-C, or Terminated) passes through. The command line and
    optbench.api both call it."""
    if command in ("suite", "targets"):
        return [_suite(command, args, progress)]
    plans = check_command_line(command, args)
    folders: list[Path] = []
    _run_hydra_app(command, args, hydra_app(command, plans, progress, folders))
    return folders


def _suite(command: str, args: list[str], progress: bool = True) -> Path:
    """`optbench suite` and `optbench targets`: one sweep job per workload (a Hydra
    multirun, checked whole before it starts), then the suite's own files or the targets.
    Returns the suite's folder."""
    from optbench import workloads

    request = workloads.parse(command, args)
    for line in request.left_out:
        print(f"optbench: {line}")
    check_writable(request.folder)
    suites = workloads.both_tracks(request) if request.track == "both" else [request]
    # every track's jobs checked before any trains
    checked = [(suite, check_command_line(command, suite.hydra_args)) for suite in suites]
    for suite, plans in checked:
        ran, table = workloads.record_workloads(suite, plans)
        _run_hydra_app(command, suite.hydra_args, hydra_app(command, plans, progress))
        _drop_working_directory(suite.folder / "multirun.yaml")  # its own callback is off
        for line in workloads.finish(suite, ran, table):
            print(f"optbench: {line}" + (f" ({suite.track} track)" if suite.track else ""))
    if request.track == "both":
        from optbench.report import tracks

        written = tracks.write(request.folder)
        print(f"optbench: the two tracks side by side in {written[-1]}")
    return request.folder


def version() -> str:
    """optbench's version and torch's, without importing torch (which takes seconds)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from optbench import __version__

    try:
        torch = installed("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"optbench {__version__} (torch {torch})"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if hasattr(sys.stdout, "reconfigure"):  # progress lines show up at once in a pipe
        sys.stdout.reconfigure(line_buffering=True)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if "--version" in args[:2] or command == "-V":  # `optbench run --version` too, not Hydra's
        print(version())
        return 0
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if command in COMMANDS and ("--help" in rest or "-h" in rest):
            from optbench import helptext

            print(helptext.text(command, rest), end="")
            return 0
        if command in (*COMMANDS, "suite", "targets"):
            train(command, rest)
            return 0
        if command in ("plot", "compare", "data", "optimizers"):
            from optbench import commands

            return commands.HANDLERS[command](rest)
        raise ConfigError(
            f"Unknown command {command!r}; valid commands: run, sweep, tune, suite, targets, plot, "
            "compare, data, optimizers. "
            "See `optbench --help`."
        )
    except ConfigError as error:
        print(f"optbench: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ResourceError as error:
        print(f"optbench: error: {error.strerror}", file=sys.stderr)
        return EXIT_RESOURCE
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        stopped = "stopped by SIGTERM" if terminated else "interrupted"
        if command == "data":
            print(
                f"optbench: {stopped} while preparing the data; nothing half-written was kept "
                "(the files that pass their MD5 check were). Run the same command again "
                "to finish the dataset.",
                file=sys.stderr,
            )
        else:
            print(
                f"optbench: {stopped}; run the same command again to resume (complete runs "
                "are skipped, unfinished ones continue from their last evaluation point).",
                file=sys.stderr,
            )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def console() -> None:
    """The `optbench` console script: main(), then exit without Python's teardown.

    Once torch and its compiler are imported, tearing the interpreter down (freeing every
    module) takes a noticeable time after the work is done (docs/speed.md). The exit
    handlers still run (logging's flush and close among them) and every file optbench
    writes is already closed, so only that teardown is skipped; while a thread that Python
    would wait for is still alive, the exit is the ordinary one."""
    code = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # e.g. a closed pipe
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
