"""The commands that read results and configs rather than train: plot, compare (a ranking,
or whether one folder reproduces another), data prepare and optimizers. Each takes its
arguments after the command's name and returns the exit code; `HANDLERS` maps each
command's name to its function."""

from __future__ import annotations

import argparse
from pathlib import Path

from optbench.errors import ConfigError, ResultsError
from optbench.files import check_writable

EXIT_INCONSISTENT = 1  # `optbench compare A B`: B does not reproduce A
EXIT_CANNOT_TEST = 3  # `optbench compare A B`: the numbers differ and cannot be tested


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
    from optbench.results import store

    dirs = options.results_dirs
    try:
        if len(dirs) == 1 and options.out is None:
            return dirs[0], store.read_runs(dirs[0])
        if options.out is None:
            raise ConfigError(f"Several folders ({', '.join(map(str, dirs))}) need --out DIR.")
        runs = store.read_many(dirs, allow_mixed=options.allow_mixed)
        check_writable(options.out, way_out="--out DIR")
        _check_out_holds_no_other_results(options.out, runs)
        store.write_results(options.out, runs)
        for line in _seeds_compared(runs):
            print(line)
        return options.out, runs
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None


def _check_out_holds_no_other_results(out: Path, runs) -> None:
    """--out never writes over results: a folder that holds a job's results (its
    config.yaml) or other runs than these is refused. The same combination again, into the
    folder it made, is allowed: it rewrites what it wrote."""
    from optbench.results import store
    from optbench.results.provenance import CONFIG_YAML

    existing = Path(out) / store.RUNS_CSV
    if (Path(out) / CONFIG_YAML).is_file():
        held = "a job's results (config.yaml)"
    elif existing.is_file() and existing.read_text() != runs[store.run_columns(runs)].to_csv(
        index=False
    ):
        held = f"other runs ({existing})"
    else:
        return
    raise ConfigError(
        f"--out {out} already holds {held}; optbench never writes over results. Give --out "
        "a new folder (or the one an earlier combination of these same folders made), or "
        "move that folder away first."
    )


def _seeds_compared(runs) -> list[str]:
    """On screen, where an optimizer has seeds that the ranking leaves out (another
    optimizer lacks them, or they diverged): the ranking's own note of the seeds compared."""
    from optbench.analysis import stats

    return [
        line
        for table, _ in stats.rankings(runs).values()
        for line in stats.seeds_note(table)
        if line
    ]


def plot(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="optbench plot", description="Redraw every plot.")
    _results_arguments(parser)
    parser.add_argument(
        "--x",
        action="append",
        choices=["step", "epoch", "grad_evals", "wall_s"],
        help="what the curves are drawn against (repeatable; default: step)",
    )
    options = parser.parse_args(args)
    from optbench.report import plots
    from optbench.results import checksums

    folder, _ = _results_folder(options)
    written = []
    for x in options.x or ["step"]:
        written += plots.plot_all(folder, x=x)
    checksums.update(folder, written)
    for path in written:
        print(path)
    return 0


def analyse_or_check_rerun(args: list[str]) -> int:
    """`optbench compare`: write the ranking, published comparison and report of a results
    folder (or of several combined); given two folders and no --out, the rerun check."""
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
    from optbench.results import checksums

    folder, runs = _results_folder(options)
    written = write_analysis(folder, runs, draw_plots=False)
    checksums.update(folder, written)
    for path in written:
        print(path)
    return 0


def _rerun_check(first: Path, second: Path) -> int:
    """Print whether `second` reproduces `first`; exit 1 when they are inconsistent."""
    from optbench.analysis import rerun

    try:
        verdict = rerun_verdict(first, second)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    print(rerun.report(first, second, verdict), end="")
    codes = {"inconsistent": EXIT_INCONSISTENT, "cannot test": EXIT_CANNOT_TEST}
    return codes.get(verdict.verdict, 0)


def data(args: list[str]) -> int:
    from optbench.data import prepare

    parser = argparse.ArgumentParser(prog="optbench data", description="Manage datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    command = sub.add_parser("prepare", help="put datasets on disk in torchvision's layout")
    command.add_argument("names", nargs="+", metavar="NAME", help=", ".join(prepare.DATASETS))
    command.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $OPTBENCH_DATA_DIR, else data/ of the checkout, else ./data",
    )
    options = parser.parse_args(args)
    data_dir = prepare.resolve_data_dir(str(options.data_dir) if options.data_dir else None)
    for name in options.names:
        prepare.prepare(name, data_dir)
        print(f"{name}: ready under {data_dir.resolve()}")
    return 0


def optimizers(args: list[str]) -> int:
    from optbench.optimizers import catalog

    parser = argparse.ArgumentParser(
        prog="optbench optimizers",
        description="Every optimizer optimizer=NAME takes: where it comes from, whether its "
        "runs train stacked (element-wise) or alone, what it needs, or why it is refused.",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "searchpath",
        nargs="?",
        metavar="hydra.searchpath=[file://DIR]",
        help="also list the optimizer files of your own config folders (DIR/optimizer/)",
    )
    parsed = parser.parse_args(args)
    if parsed.searchpath and not parsed.searchpath.lstrip("+").startswith("hydra.searchpath="):
        raise ConfigError(
            f"`optbench optimizers` takes no {parsed.searchpath!r}; it takes --markdown and "
            "hydra.searchpath=[file://DIR] (your own config folders), as `optbench run` does."
        )
    folders = catalog.searchpath_folders([parsed.searchpath or ""])
    print(catalog.text(markdown=parsed.markdown, searchpath=folders), end="")
    problems = catalog.unreadable()
    if problems:  # listed the rest; now the file to fix
        raise ConfigError(f"Not listed: {' '.join(problems)}")
    return 0


def rerun_verdict(first_dir: Path, second_dir: Path):
    """Does second_dir reproduce first_dir? Their runs read and checked to be of one
    protocol (ResultsError naming the keys that differ, else), then
    analysis.rerun.judge_reproduction's verdict."""
    from optbench.analysis import rerun
    from optbench.results import store
    from optbench.results.provenance import differences

    first, second = store.read_runs(first_dir), store.read_runs(second_dir)
    if set(first["fingerprint"]) != set(second["fingerprint"]):
        raise ResultsError(
            f"{first_dir} and {second_dir} hold results of different protocols (fingerprints "
            f"{', '.join(sorted(set(first['fingerprint'])))} and "
            f"{', '.join(sorted(set(second['fingerprint'])))}; keys that differ: "
            f"{differences(Path(first_dir), Path(second_dir))}): a rerun is the same protocol. "
            "Compare two folders of one protocol."
        )
    return rerun.judge_reproduction(first, second, (str(first_dir), str(second_dir)))


HANDLERS = {
    "plot": plot,
    "compare": analyse_or_check_rerun,
    "data": data,
    "optimizers": optimizers,
}
