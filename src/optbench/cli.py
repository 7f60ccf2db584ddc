"""The `optbench` command: a thin shell around optbench.benchmark.

    optbench run [OVERRIDES]      one optimizer over seeds (a Hydra app: -m, --cfg job, --help)
    optbench sweep [OVERRIDES]    every optimizer of the experiment in one job
    optbench tune [OVERRIDES]     the same random-search budget for every optimizer
    optbench plot RESULTS_DIR     redraw every plot from the files on disk
    optbench compare RESULTS_DIR  ranking, published numbers beside ours, report
    optbench data prepare NAME    put a dataset on disk in torchvision's layout

Before Hydra starts a job (and creates its output folder), every job the command line asks
for is composed and checked, so bad input fails in seconds with one paragraph and nothing
written.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench.checks import check_config
from optbench.config import CONFIG_NAME, CONFIG_PACKAGE, ConfigError, ResourceError

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
  plot RESULTS_DIR... [--x step|epoch|grad_evals|wall_s] [--out DIR] [--allow-mixed]
                           redraw every plot from RESULTS_DIR/runs.csv; several folders
                           are combined into --out (never two protocols, unless
                           --allow-mixed)
  compare RESULTS_DIR... [--out DIR] [--allow-mixed]
                           rank the optimizers with paired tests (ranking.csv, .md), set
                           the tutorial's published numbers beside ours (comparison.csv,
                           .md: wizard_ffnn, examples_cnn) and write report.md/.html
  compare A B              does B reproduce A? bit-identical, consistent (last digits
                           differ, no optimizer significantly) or inconsistent (exit 1)
  data prepare NAME...     put datasets on disk (mnist, fashion_mnist, cifar10)
                           in data_dir (default: $OPTBENCH_DATA_DIR, else data/ of the checkout)

Results go to outputs/<experiment>/<overrides>/ unless hydra.run.dir=DIR is given. The
same command again skips the runs already complete there and resumes an interrupted job
from its last evaluation point; resume=false moves the old results aside first.
"""

EXIT_INCONSISTENT = 1  # `optbench compare A B`: B does not reproduce A
EXIT_BAD_INPUT = 2
EXIT_RESOURCE = 74  # sysexits' EX_IOERR: a resource failed (a full disk), not the input
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
EXIT_TERMINATED = 143  # the shell's code for SIGTERM (what SLURM sends at a time limit)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the job stops at once and resumes from its checkpoint."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


# ---------------------------------------------------------------------------------------
# Composing the optimizers of a sweep


def sweep_optimizer_configs(cfg: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """Compose the config once per optimizer in cfg.optimizers, so each gets its own file's
    hyperparameters and its experiment's protocol values (experiment_optimizer/...).
    Needs an initialised Hydra (inside a Hydra app, or `initialize_config_module`)."""
    if not cfg.optimizers:
        given = any(o.split("=", 1)[0].lstrip("+~") == "optimizers" for o in overrides)
        whose = "optimizers=[] lists" if given else f"Experiment {cfg.experiment_name!r} lists"
        raise ConfigError(f"{whose} no optimizer to sweep; give some with optimizers=[sgd,adam].")
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == "optimizer"]
    configs = []
    for name in cfg.optimizers:
        try:
            composed = compose(CONFIG_NAME, overrides=kept + [f"optimizer={name}"])
        except MissingConfigException as error:
            raise ConfigError(
                f"Unknown optimizer {name!r} in optimizers={list(cfg.optimizers)}; valid "
                f"choices: {', '.join(error.options or [])}."
            ) from None
        configs.append(composed.optimizer)
    return configs


# job_optimizers' answers, by (command, overrides): the check before Hydra starts composes
# them, and the job reuses them (composing a config takes about 0.3 s)
_composed: dict[tuple[str, tuple[str, ...]], list[DictConfig]] = {}


def job_optimizers(command: str, cfg: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """The optimizer configs a job trains: `run` its one optimizer, `sweep` the experiment's
    list; each at every multiple of lr_grid when one is given."""
    from optbench.optimizers import expand_lr_grid

    if command == "tune" and cfg.lr_grid is not None:
        raise ConfigError(
            f"lr_grid={list(cfg.lr_grid)} does not apply to `optbench tune`, which draws every "
            "trial's lr itself (log-uniform over two decades either side); drop lr_grid, or "
            "use it with `optbench sweep`."
        )
    key = (command, tuple(o for o in overrides if not o.lstrip("+~").startswith("hydra")))
    if key not in _composed:
        chosen = [cfg.optimizer] if command == "run" else sweep_optimizer_configs(cfg, overrides)
        _composed[key] = chosen if command == "tune" else expand_lr_grid(chosen, cfg.lr_grid)
    return _composed[key]


# ---------------------------------------------------------------------------------------
# Checking every job before Hydra runs it


def _one_paragraph(error: BaseException, overrides: list[str] = ()) -> str:
    """Hydra's and OmegaConf's errors, reworded as one paragraph naming the valid choices."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return (
            f"Unknown {group} {name!r}; valid choices: {', '.join(error.options)}. "
            f"Choose one with {group}=NAME."
        )
    text = str(error)
    if error.__cause__ is not None and str(error.__cause__) not in text:
        text += "\n" + str(error.__cause__)
    lines = [line.strip() for line in text.splitlines()]
    kept = []
    for line in lines:
        if line.startswith(("full_key:", "object_type", "reference_type", "Set the environment")):
            break
        if line and not line.startswith("To append to your config"):  # the schema forbids it
            kept.append(line.rstrip("."))
    text = ": ".join(kept) + "."
    if "not in" in text and "Key '" in text:
        text += " " + _valid_keys_hint(text, overrides)
    return text


def _valid_keys_hint(message: str, overrides: list[str]) -> str:
    """For a misspelt key, list the keys that exist at that level of the config."""
    import re

    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return ""
    key = match.group(1)
    parent = key.rpartition(".")[0]
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        default = compose(CONFIG_NAME, overrides=others)
    except (HydraException, OmegaConfBaseException):
        default = compose(CONFIG_NAME)
    node = OmegaConf.select(default, parent) if parent else default
    if not isinstance(node, DictConfig):
        return ""
    prefix = f"{parent}." if parent else ""
    return f"Valid keys here: {', '.join(prefix + k for k in node.keys())}."


def _jobs_of(args: list[str]) -> list[list[str]]:
    """The override list of every job a command line asks for; none where the command trains
    nothing (--help, --cfg), reads configs from elsewhere, or uses a sweep syntax that only
    its sweeper plugin expands: those jobs are checked when they start instead."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed, _ = get_args_parser().parse_known_args(args)
    if (
        parsed.help
        or parsed.hydra_help
        or parsed.cfg
        or parsed.info
        or parsed.shell_completion
        or parsed.config_path
        or parsed.config_dir
        or parsed.config_name
        or parsed.experimental_rerun
    ):
        return []
    if not parsed.multirun:
        return [list(parsed.overrides)]
    try:
        parsed_overrides = OverridesParser.create().parse_overrides(parsed.overrides)
        return BasicSweeper.split_arguments(parsed_overrides, None)[0]
    except HydraException:
        return []


def _output_root(args: list[str]) -> Path:
    """Where the jobs will write: hydra.run.dir / hydra.sweep.dir when given, else the
    default folder (outputs/ or multirun/ under the working directory)."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in args if a.startswith(key)]
    return Path(given[-1] if given else ("multirun" if multirun else "outputs"))


def check_writable(
    folder: Path, way_out: str = "hydra.run.dir=DIR (hydra.sweep.dir=DIR for -m)"
) -> None:
    """Fail now, not after training, when folder cannot be created or written. Probes with
    a temporary folder inside its deepest existing ancestor, and leaves nothing behind."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ConfigError(
            f"Cannot write results to {folder} ({' '.join(str(error).split())}). Choose a "
            f"folder you can write with {way_out}."
        ) from None


def check_command_line(command: str, args: list[str]) -> None:
    """Compose and check every job, and prepare its dataset, before any of them runs."""
    jobs = _jobs_of(args)
    datasets = set()
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        for overrides in jobs:
            try:
                cfg = compose(CONFIG_NAME, overrides=overrides)
                optimizer_cfgs = job_optimizers(command, cfg, overrides)
            except (HydraException, OmegaConfBaseException, ValueError) as error:
                raise ConfigError(_one_paragraph(error, overrides)) from None
            check_config(cfg, optimizer_cfgs)
            datasets.add((cfg.dataset.name, cfg.data_dir))
    check_writable(_output_root(args))
    from optbench import data

    for name, data_dir in sorted(datasets, key=str):
        data.prepare(name, data.resolve_data_dir(data_dir))


# ---------------------------------------------------------------------------------------
# The Hydra apps and their multirun callback


def _job(cfg: DictConfig, optimizer_cfgs: list[DictConfig], command: str = "run") -> None:
    from optbench.benchmark import benchmark, tune

    hydra_cfg = HydraConfig.get()
    try:
        (tune if command == "tune" else benchmark)(
            cfg,
            optimizer_cfgs,
            Path(hydra_cfg.runtime.output_dir),
            overrides=list(hydra_cfg.overrides.task),
        )
    except ConfigError as error:  # e.g. a results folder of another protocol
        print(f"optbench: error: {error}", file=sys.stderr)
        _discard_if_empty(Path(hydra_cfg.runtime.output_dir))
        sys.exit(EXIT_BAD_INPUT)
    except ResourceError as error:  # e.g. a full disk
        print(f"optbench: error: {error.strerror}", file=sys.stderr)
        _discard_if_empty(Path(hydra_cfg.runtime.output_dir))
        sys.exit(EXIT_RESOURCE)


def _discard_if_empty(folder: Path) -> None:
    """Remove a job's folder that holds nothing but the empty log Hydra opened in it."""
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if [e.name for e in entries] == ["optbench.log"] and entries[0].stat().st_size == 0:
        with contextlib.suppress(OSError):  # e.g. a mount point: it stays
            entries[0].unlink()
            folder.rmdir()


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=CONFIG_NAME)
def run_app(cfg: DictConfig) -> None:
    _job(cfg, job_optimizers("run", cfg, list(HydraConfig.get().overrides.task)))


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=CONFIG_NAME)
def sweep_app(cfg: DictConfig) -> None:
    _job(cfg, job_optimizers("sweep", cfg, list(HydraConfig.get().overrides.task)))


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=CONFIG_NAME)
def tune_app(cfg: DictConfig) -> None:
    _job(cfg, job_optimizers("tune", cfg, list(HydraConfig.get().overrides.task)), "tune")


class CombineMultirun(Callback):
    """At the end of a multirun: one runs.csv, summary.csv and set of plots for all jobs."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from optbench import results
        from optbench.benchmark import write_analysis

        sweep_dir = Path(config.hydra.sweep.dir)
        combined = results.combine_jobs(sweep_dir)
        if combined is None:
            return
        results.write_results(sweep_dir, combined)
        write_analysis(sweep_dir, combined)
        print(f"optbench: combined results of all jobs in {sweep_dir.resolve()}")


# ---------------------------------------------------------------------------------------
# Entry point


def _results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dirs", type=Path, nargs="+", metavar="RESULTS_DIR")
    parser.add_argument(
        "--out", type=Path, help="where several folders' combined results go (required then)"
    )
    parser.add_argument(
        "--allow-mixed", action="store_true", help="combine folders of different protocols"
    )


def _results_folder(options: argparse.Namespace):
    """(folder to write into, its runs): the one RESULTS_DIR, or several combined into --out."""
    from optbench import results

    dirs = options.results_dirs
    try:
        if len(dirs) == 1 and options.out is None:
            return dirs[0], results.read_runs(dirs[0])
        if options.out is None:
            raise ConfigError(f"Several folders ({', '.join(map(str, dirs))}) need --out DIR.")
        runs = results.read_many(dirs, allow_mixed=options.allow_mixed)
        check_writable(options.out, way_out="--out DIR")
        results.write_results(options.out, runs)
        return options.out, runs
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None


def _plot(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="optbench plot", description="Redraw every plot.")
    _results_arguments(parser)
    parser.add_argument(
        "--x",
        action="append",
        choices=["step", "epoch", "grad_evals", "wall_s"],
        help="what the curves are drawn against (repeatable; default: step)",
    )
    options = parser.parse_args(args)
    from optbench import plots

    folder, _ = _results_folder(options)
    written = []
    for x in options.x or ["step"]:
        written += plots.plot_all(folder, x=x)
    for path in written:
        print(path)
    return 0


def _compare(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench compare",
        description="Rank the optimizers with paired tests, set the tutorial's published "
        "numbers beside ours where there are some, and write the report.",
    )
    _results_arguments(parser)
    options = parser.parse_args(args)
    if len(options.results_dirs) == 2 and options.out is None:
        return _rerun_check(*options.results_dirs)
    from optbench.benchmark import write_analysis

    folder, runs = _results_folder(options)
    written = write_analysis(folder, runs, draw_plots=False)
    for path in written:
        print(path)
    return 0


def _rerun_check(first: Path, second: Path) -> int:
    """Print whether `second` reproduces `first`; exit 1 when they are inconsistent."""
    from optbench import rerun

    try:
        verdict = rerun.compare(first, second)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    print(rerun.report(first, second, verdict), end="")
    return EXIT_INCONSISTENT if verdict.verdict == "inconsistent" else 0


def _data(args: list[str]) -> int:
    from optbench import data

    parser = argparse.ArgumentParser(prog="optbench data", description="Manage datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    prepare = sub.add_parser("prepare", help="put datasets on disk in torchvision's layout")
    prepare.add_argument("names", nargs="+", metavar="NAME", help=", ".join(data.DATASETS))
    prepare.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $OPTBENCH_DATA_DIR, else data/ of the checkout, else ./data",
    )
    options = parser.parse_args(args)
    data_dir = data.resolve_data_dir(str(options.data_dir) if options.data_dir else None)
    for name in options.names:
        data.prepare(name, data_dir)
        print(f"{name}: ready under {data_dir.resolve()}")
    return 0


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
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in a pipe
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if "--version" in args[:2] or command == "-V":  # `optbench run --version` too, not Hydra's
        print(version())
        return 0
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if command in ("run", "sweep", "tune"):
            check_command_line(command, rest)
            sys.argv = [f"optbench {command}", *rest]
            {"run": run_app, "sweep": sweep_app, "tune": tune_app}[command]()
            return 0
        if command == "plot":
            return _plot(rest)
        if command == "compare":
            return _compare(rest)
        if command == "data":
            return _data(rest)
        raise ConfigError(
            f"Unknown command {command!r}; valid commands: run, sweep, tune, plot, compare, data. "
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
        print(
            f"optbench: {'stopped by SIGTERM' if terminated else 'interrupted'}; run the same "
            "command again to resume (complete runs are skipped, unfinished ones continue "
            "from their last evaluation point).",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
