"""A suite's own files, from its workloads' runs.csv and workloads.csv alone:

time_to_target_runs.csv   every run: reached the target?, when (steps, epochs, gradient
                          evaluations, seconds; inf when never), final accuracy
time_to_target.csv        every workload and optimizer: seeds that reached it, the
                          median time with its distribution-free interval
performance_ratios.csv    every measure, workload and optimizer: median time / the best's
profile_scores.csv        every measure and optimizer: the area under its profile
performance_profile_<measure>.png
iqm.csv, iqm.png          interquartile mean of normalised final accuracy, 95% CI
probability_of_improvement.csv, .png
average_ranks.csv         the average rank of every optimizer, ranked within each workload
                          (mean over seeds) and, as a secondary view, each workload × seed
friedman.csv              the Friedman test of both views: blocks, optimizers, p-value and
                          the Nemenyi critical difference
nemenyi.csv, critical_difference.png   the Nemenyi test by workloads (critical_difference_
                          workload_seed.png: the secondary view)
rank_stability.csv, .png  how often each optimizer ranks best over resamples of the seeds
suite.md, suite.html      the report: everything above, linking each workload's report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optbench.analysis import aggregates, profiles, stats, targets
from optbench.analysis.targets import PROFILE_MEASURES
from optbench.errors import ResultsError
from optbench.files import write_csv
from optbench.labels import counted
from optbench.report import suite_figures
from optbench.report.report import render
from optbench.results.store import read_runs

WORKLOADS_CSV = "workloads.csv"  # workloads.record_workloads: a record of the Workloads, for users


@dataclass(frozen=True)
class Workload:
    """A workload a suite (or `targets`) trains, as its job's checked plan gives it; the
    suite's files are made from these, and workloads.csv records them (`row`)."""

    workload: str  # its experiment preset
    dataset: str
    model: str
    target: float | None  # test accuracy; None where `targets` derives it
    chance: float  # the accuracy of guessing: 1 / classes
    steps: int
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...]
    derived: str  # how the target was derived (JSON), or "given on the command line"
    target_on_this_protocol: bool  # derived on the protocol the workload trains now

    def row(self) -> dict:
        """Its row of workloads.csv: seeds and optimizers each one space-separated cell."""
        return {
            "workload": self.workload,
            "status": "ran",
            "dataset": self.dataset,
            "model": self.model,
            "target": self.target,
            "chance": self.chance,
            "steps": self.steps,
            "seeds": " ".join(map(str, self.seeds)),
            "optimizers": " ".join(self.optimizers),
            "derived": self.derived,
            "target_on_this_protocol": self.target_on_this_protocol,
        }


def workload_runs(folder: Path, workload: Workload) -> pd.DataFrame:
    """The runs a suite asked of one workload (its optimizers and seeds), from
    <folder>/<workload>/runs.csv; several settings of one optimizer are refused."""
    try:
        runs = read_runs(Path(folder) / workload.workload)
    except FileNotFoundError as error:
        raise ResultsError(
            f"{error} Run the same command again to train the workload's runs."
        ) from None
    names, seeds = list(workload.optimizers), list(workload.seeds)
    runs = runs[runs["optimizer"].isin(names) & runs["seed"].isin(seeds)]
    settings = runs.groupby("optimizer")["hyperparameters"].nunique()
    if (settings > 1).any():
        raise ResultsError(
            f"{Path(folder) / workload.workload} holds {settings.max()} settings of "
            f"{settings.idxmax()}; a suite compares one setting per optimizer. Move the "
            "folder aside, or run the suite with resume=false."
        )
    missing = sorted(set(names) - set(runs["optimizer"]))
    if missing:
        raise ResultsError(
            f"{Path(folder) / workload.workload} has no runs of {', '.join(missing)}: run the "
            "same suite command again to train them."
        )
    return runs


def analyse(folder: Path, ran: list[Workload], workloads: pd.DataFrame) -> dict:
    """Every table of the suite's files, as DataFrames (and the ranks' results), from the
    workloads that ran and their runs; `workloads` is workloads.csv's table (the report
    shows it)."""
    times = pd.concat(
        [
            targets.run_times(workload_runs(folder, w), w.target).assign(workload=w.workload)
            for w in ran
        ],
        ignore_index=True,
    )
    per_optimizer = pd.concat(
        [
            targets.optimizer_times(t).assign(workload=w)
            for w, t in times.groupby("workload", sort=False)
        ],
        ignore_index=True,
    )
    names = list(times["optimizer"].unique())
    ratio_tables, ratio_rows, score_rows = {}, [], []
    for measure in PROFILE_MEASURES:
        medians = per_optimizer.pivot(
            index="workload", columns="optimizer", values=f"{measure}_median"
        )[names]
        ratio = ratio_tables[measure] = profiles.ratios(medians)
        long = ratio.stack().rename("ratio").reset_index()
        ratio_rows.append(long.assign(measure=measure, median=medians.stack().to_numpy()))
        score = profiles.score(ratio)
        score_rows.append(score.rename_axis("optimizer").reset_index().assign(measure=measure))
    scores = aggregates.normalised_scores(
        times, {w.workload: w.target for w in ran}, {w.workload: w.chance for w in ran}
    )
    return {
        "workloads": workloads,
        "times": times,
        "per_optimizer": per_optimizer,
        "ratio_tables": ratio_tables,  # measure -> workloads x optimizers
        "ratios": pd.concat(ratio_rows, ignore_index=True),
        "profile_scores": pd.concat(score_rows, ignore_index=True),
        "iqm": aggregates.iqm_table(scores),
        "probability": aggregates.probability_of_improvement(scores),
        "ranks": aggregates.ranks(scores),
        "ranks_by_seed": aggregates.ranks(scores, by="workload_seed"),
        "rank_stability": aggregates.rank_stability(scores),
    }


def write(folder: Path, t: dict, measure: str = "steps") -> list[Path]:
    """Write every file of the suite into folder from its tables (analyse); return their
    paths."""
    folder = Path(folder)
    written = []
    for name, table in (
        ("time_to_target_runs", t["times"]),
        ("time_to_target", t["per_optimizer"]),
        ("performance_ratios", t["ratios"]),
        ("profile_scores", t["profile_scores"]),
        ("iqm", t["iqm"]),
        ("probability_of_improvement", t["probability"]),
        ("average_ranks", _average_ranks(t)),
        ("friedman", _friedman(t)),
        ("rank_stability", t["rank_stability"]),
    ):
        write_csv(table, folder / f"{name}.csv")
        written.append(folder / f"{name}.csv")
    if "nemenyi" in t["ranks"]:
        write_csv(
            t["ranks"]["nemenyi"].rename_axis("optimizer").reset_index(), folder / "nemenyi.csv"
        )
        written.append(folder / "nemenyi.csv")
    n_workloads = t["times"]["workload"].nunique()
    for m, ratio in t["ratio_tables"].items():
        path = folder / f"performance_profile_{m}.png"
        written.append(suite_figures.plot_profile(ratio, m, path))
    written.append(suite_figures.plot_iqm(t["iqm"], folder / "iqm.png"))
    written.append(
        suite_figures.plot_probability(t["probability"], folder / "probability_of_improvement.png")
    )
    for ranks, name in (
        (t["ranks"], "critical_difference.png"),
        (t["ranks_by_seed"], "critical_difference_workload_seed.png"),
    ):
        diagram = suite_figures.plot_critical_difference(ranks, folder / name)
        written += [diagram] if diagram else []
    written.append(
        suite_figures.plot_rank_stability(
            t["rank_stability"], n_workloads, folder / "rank_stability.png"
        )
    )
    title, parts = sections(t, measure)
    return written + render(folder, "suite", title, parts)


def _average_ranks(t: dict) -> pd.DataFrame:
    """Each optimizer's average rank by workload blocks, then by workload × seed blocks."""
    by_workload = t["ranks"]["average"]
    by_seed = t["ranks_by_seed"]["average"].reindex(by_workload.index)
    return pd.DataFrame(
        {
            "optimizer": by_workload.index,
            "average_rank": by_workload.to_numpy(),
            "average_rank_workload_seed": by_seed.to_numpy(),
        }
    )


def _friedman(t: dict) -> pd.DataFrame:
    """The Friedman test and the Nemenyi critical difference of both views of the ranks."""
    return pd.DataFrame(
        [
            {
                "blocks_by": ranks["by"],
                "blocks": ranks["blocks"],
                "optimizers": len(ranks["average"]),
                "friedman_p": ranks["friedman_p"],
                "critical_difference": ranks["critical_difference"],
            }
            for ranks in (t["ranks"], t["ranks_by_seed"])
        ]
    )


# ---------------------------------------------------------------------------------------
# The report


def _time(value: float, measure: str) -> str:
    if value == float("inf"):
        return "never"
    return f"{value:.1f}" if measure == "seconds" else f"{value:g}"


def unreached(per_optimizer: pd.DataFrame) -> list[str]:
    """The workloads on which no run of any optimizer reached the target."""
    reached = per_optimizer.groupby("workload", sort=False)["reached"].sum()
    return list(reached[reached == 0].index)


def _scores_table(t: dict, measure: str) -> pd.DataFrame:
    wide = t["profile_scores"].pivot(index="optimizer", columns="measure", values="profile_score")
    wide = wide[list(PROFILE_MEASURES)].sort_values(measure, ascending=False)
    iqm = t["iqm"].set_index("optimizer")
    ranks = t["ranks"]["average"]
    return pd.DataFrame(
        {
            "optimizer": wide.index,
            **{f"profile score ({m})": wide[m].round(3).to_numpy() for m in PROFILE_MEASURES},
            "IQM [95% CI]": [
                f"{r.iqm:.3f} [{r.iqm_low:.3f}, {r.iqm_high:.3f}]"
                for r in iqm.loc[wide.index].itertuples()
            ],
            "average rank": [round(float(ranks[o]), 2) for o in wide.index],
        }
    )


def _workload_table(per_optimizer: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "optimizer": per_optimizer["optimizer"],
            "final accuracy (median of the runs that did not diverge)": per_optimizer[
                "final_test_accuracy_median"
            ].round(4),
            "reached": [f"{r.reached}/{r.seeds}" for r in per_optimizer.itertuples()],
            **{
                f"{m} to target: median [interval]": [
                    f"{_time(getattr(r, m + '_median'), m)} "
                    f"[{_time(getattr(r, m + '_low'), m)}, {_time(getattr(r, m + '_high'), m)}]"
                    for r in per_optimizer.itertuples()
                ]
                for m in ("steps", "epochs", "seconds")
            },
        }
    )


def _probability_table(probability: pd.DataFrame) -> pd.DataFrame:
    cells = probability.assign(
        cell=[f"{r.probability:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in probability.itertuples()]
    )
    wide = cells.pivot(index="optimizer", columns="other", values="cell").fillna("—")
    order = list(dict.fromkeys(probability["optimizer"]))
    return wide.loc[order, order].rename_axis(None, axis=1).reset_index()


def _what_ran(t: dict) -> list:
    workloads = t["workloads"]
    ran = workloads[workloads["status"] == "ran"]
    what = "Workloads and targets: " + "; ".join(
        f"{w.workload} ({w.dataset}, {w.model}, target {w.target:.4f})" for w in ran.itertuples()
    )
    left = workloads[workloads["status"] != "ran"]
    what += "." + "".join(f" {w.workload}: {w.status}" for w in left.itertuples())
    if "final_validation_accuracy" in t["times"]:
        what += (
            " The targets are validation accuracies, and a run reaches its target when its "
            "accuracy on the validation set held out of the training data does; the test "
            "accuracy is reported beside it and chooses nothing."
        )
    else:
        what += (
            " These workloads hold out no validation set (dataset.validation_size), so their "
            "targets were set, and are reached, on the test accuracy."
        )
    parts = [("What ran", "text", what)]
    missed = unreached(t["per_optimizer"])
    if missed:
        text = (
            f"No run of any optimizer reached the target on {', '.join(missed)}: every "
            "optimizer's time there is infinite, and the profiles count the workload as lost "
            "for all of them."
        )
        parts.append(("Targets nobody reached", "text", text))
    return parts


def rank_text(ranks: dict, by_seed: dict) -> str:
    """What the Friedman test says, and how little it can say with few workloads."""
    k = len(ranks["average"])
    if ranks["friedman_p"] != ranks["friedman_p"]:  # NaN: too few blocks or optimizers
        return (
            f"The Friedman test needs at least 2 workloads and 3 optimizers; this suite has "
            f"{counted(ranks['blocks'], 'workload')} and {counted(k, 'optimizer')}, so the "
            "average ranks above are all it can say (no test, no critical-difference diagram)."
        )
    text = (
        f"Ranked within each of the {ranks['blocks']} workloads (the mean score over its "
        f"seeds): Friedman p = {ranks['friedman_p']:.3g}; critical difference (Nemenyi, "
        f"α = {stats.ALPHA}) = {ranks['critical_difference']:.2f} of the {k - 1} ranks "
        "that separate first from last. "
    )
    if ranks["critical_difference"] > (k - 1) / 2:
        text += (
            f"With {ranks['blocks']} workloads the test has little power: only optimizers "
            "nearly always first against ones nearly always last can be told apart; a bar "
            "joining two optimizers does not show they are equal. "
        )
    return text + (
        f"Secondary view, ranked within each of the {by_seed['blocks']} workload × seed "
        f"blocks: Friedman p = {by_seed['friedman_p']:.3g}, critical difference "
        f"{by_seed['critical_difference']:.2f}; the seeds of one workload are not independent "
        "data sets as the test assumes, so these p-values are optimistic."
    )


def _aggregate_parts(t: dict) -> list:
    ranks = t["ranks"]
    parts = [
        ("IQM of normalised final accuracy (0: chance, 1: the target), 95% CI", "image", "iqm.png"),
        (
            "Probability of improvement: P(row beats column), 95% stratified bootstrap CI",
            "table",
            _probability_table(t["probability"]),
        ),
        ("Probability of improvement", "image", "probability_of_improvement.png"),
        ("Average ranks", "text", rank_text(ranks, t["ranks_by_seed"])),
    ]
    if "nemenyi" in ranks:
        parts.append(
            ("Critical-difference diagram (workloads)", "image", "critical_difference.png")
        )
    stability = t["rank_stability"].iloc[0]
    parts.append(
        (
            "Rank stability over resamples of the seeds",
            "text",
            f"{stability.optimizer} has the best average rank in {stability.p_best:.0%} of "
            f"{stats.RESAMPLES} resamples of each workload's seeds.",
        )
    )
    heading = "P(best average rank) and the 5-95% range of the average rank over the resamples"
    parts.append((heading, "image", "rank_stability.png"))
    if "nemenyi" in t["ranks_by_seed"]:
        parts.append(
            (
                "Critical-difference diagram (workload × seed: secondary view, optimistic)",
                "image",
                "critical_difference_workload_seed.png",
            )
        )
    return parts


def sections(t: dict, measure: str) -> tuple[str, list]:
    """The suite report's title and sections (report.render's kinds)."""
    times, workloads = t["times"], t["workloads"]
    ran = workloads[workloads["status"] == "ran"]
    title = (
        f"optbench suite: {counted(len(ran), 'workload')} × "
        f"{counted(times['optimizer'].nunique(), 'optimizer')} × "
        f"{counted(times['seed'].nunique(), 'seed')}"
    )
    parts = _what_ran(t)
    parts.append(
        (f"Who reaches the targets first (time in {measure})", "table", _scores_table(t, measure))
    )
    parts.append(
        (f"Performance profiles ({measure})", "image", f"performance_profile_{measure}.png")
    )
    parts += _aggregate_parts(t)
    for w in ran.itertuples():
        mine = t["per_optimizer"][t["per_optimizer"]["workload"] == w.workload]
        heading = f"{w.workload}: {w.dataset}, {w.model}, target {w.target:.4f}"
        parts.append((heading, "table", _workload_table(mine)))
    links = [(w, f"{w}/report.html") for w in ran["workload"]]
    parts.append(("Each workload's own report", "links", links))
    return title, parts
