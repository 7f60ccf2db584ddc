"""The two tracks of `optbench suite track=both`, side by side, from their suites' files alone
(FOLDER/defaults and FOLDER/tuned, each a whole suite: suite_report.py):

tracks.csv            every optimizer: its average rank (by workloads) and place in each track,
                      how many places it moves from defaults to tuned, how often it ranks
                      best over resamples of the seeds, and its median final test accuracy
                      over the workloads (each workload's median over seeds) in each track
tracks_accuracy.csv   every workload and optimizer: the median final test accuracy over
                      seeds in each track (reported, never chosen on)
tracks.png            the average ranks of both tracks, one line per optimizer
tracks.md, .html      the report: where the ranking changes, and how sure each track is

The tracks rank the same optimizers on the same workloads and seeds; a rank is comparable
within a track only, so a move between tracks is described, not tested. Each track's own
Friedman test and critical difference say how far its ranks can be trusted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from optbench.errors import ResultsError
from optbench.files import write_csv
from optbench.report.report import render

TRACK_NAMES = ("defaults", "tuned")
WHAT = {
    "defaults": "every optimizer as its library ships it",
    "tuned": "every optimizer tuned with the same budget",
}


def read_track(folder: Path) -> dict[str, pd.DataFrame]:
    """A track's suite files: average_ranks, friedman, rank_stability, time_to_target."""
    tables = {}
    for name in ("average_ranks", "friedman", "rank_stability", "time_to_target"):
        path = Path(folder) / f"{name}.csv"
        if not path.is_file():
            raise ResultsError(
                f"{path} is missing: the {Path(folder).name} track's suite has not finished. "
                "Run the same `optbench suite track=both` command again (resume=true keeps "
                "the runs already trained)."
            )
        tables[name] = pd.read_csv(path)
    return tables


def compare(folder: Path) -> dict:
    """The two tracks' tables (read_track) and the comparison: per optimizer (tracks.csv)
    and per workload and optimizer (tracks_accuracy.csv)."""
    t = {track: read_track(Path(folder) / track) for track in TRACK_NAMES}
    names = list(t["defaults"]["average_ranks"]["optimizer"])
    if sorted(names) != sorted(t["tuned"]["average_ranks"]["optimizer"]):
        raise ResultsError(
            f"{folder}: the defaults and tuned tracks rank different optimizers; run both "
            "tracks with the same optimizers (one `optbench suite track=both` command)."
        )
    table = pd.DataFrame({"optimizer": names})
    accuracy = []
    for track in TRACK_NAMES:
        ranks = t[track]["average_ranks"].set_index("optimizer")["average_rank"]
        table[f"average_rank_{track}"] = table["optimizer"].map(ranks)
        table[f"place_{track}"] = table[f"average_rank_{track}"].rank(method="min").astype(int)
        p_best = t[track]["rank_stability"].set_index("optimizer")["p_best"]
        table[f"p_best_{track}"] = table["optimizer"].map(p_best)
        per_workload = t[track]["time_to_target"][
            ["workload", "optimizer", "final_test_accuracy_median"]
        ].rename(columns={"final_test_accuracy_median": track})
        accuracy.append(per_workload.set_index(["workload", "optimizer"]))
        medians = per_workload.groupby("optimizer")[track].median()
        table[f"median_test_accuracy_{track}"] = table["optimizer"].map(medians)
    table["places_up"] = table["place_defaults"] - table["place_tuned"]
    table = table.sort_values(["average_rank_tuned", "optimizer"], ignore_index=True)
    by_workload = pd.concat(accuracy, axis=1).reset_index()
    return {"tracks": t, "table": table, "accuracy": by_workload}


def write(folder: Path) -> list[Path]:
    """Write tracks.csv, tracks_accuracy.csv, tracks.png and tracks.md/.html into folder
    from its two tracks' suite files; return their paths (the report last)."""
    from optbench.report import suite_figures

    folder = Path(folder)
    c = compare(folder)
    write_csv(c["table"], folder / "tracks.csv")
    write_csv(c["accuracy"], folder / "tracks_accuracy.csv")
    figure = suite_figures.plot_tracks(c["table"], _friedman(c), folder / "tracks.png")
    parts = [
        ("What the two tracks ask", "text", _questions(c)),
        ("Where the ranking changes", "text", changes(c)),
        ("How sure each track is", "text", how_sure(c)),
        ("Average ranks, defaults and tuned", "image", figure.name),
        ("Every optimizer", "table", _shown(c["table"])),
        ("Median final test accuracy, defaults → tuned", "table", _accuracy_shown(c)),
        (
            "Each track's suite",
            "links",
            [(f"{track} track", f"{track}/suite.html") for track in TRACK_NAMES],
        ),
    ]
    written = [folder / "tracks.csv", folder / "tracks_accuracy.csv", figure]
    return written + render(folder, "tracks", "Defaults and tuned: which optimizer?", parts)


def _friedman(c: dict) -> dict[str, pd.Series]:
    """Each track's Friedman row with workloads as blocks."""
    rows = {}
    for track in TRACK_NAMES:
        friedman = c["tracks"][track]["friedman"]
        rows[track] = friedman[friedman["blocks_by"] == "workload"].iloc[0]
    return rows


def _questions(c: dict) -> str:
    friedman = _friedman(c)["defaults"]
    return (
        f"The same {len(c['table'])} optimizers on the same {int(friedman['blocks'])} workloads "
        "and seeds, ranked within each workload by their mean normalised final test accuracy "
        "(0: chance, 1: the target). Defaults: every optimizer as its library ships it, no "
        "tuning, the workload's own constant learning rate (AlgoPerf's self-tuning question). "
        "Tuned: every optimizer given the same budget of random-search trials per workload "
        "under a warmup-cosine schedule, each trial chosen on the validation set only, the "
        "best then trained on the suite's seeds (the external-tuning question)."
    )


def changes(c: dict) -> str:
    """Which optimizer comes first in each track, and which move most between them."""
    table = c["table"]
    first = {
        track: ", ".join(table.loc[table[f"place_{track}"] == 1, "optimizer"])
        for track in TRACK_NAMES
    }
    text = f"First with the defaults: {first['defaults']}; first when tuned: {first['tuned']}. "
    moved = table[table["places_up"].abs() >= 3].sort_values("places_up", ascending=False)
    if moved.empty:
        return text + "No optimizer moves by 3 places or more between the tracks."
    ups = [f"{r.optimizer} ({r.place_defaults} → {r.place_tuned})" for r in moved.itertuples()]
    return text + (
        "Moving by 3 places or more from defaults to tuned (place defaults → tuned): "
        + "; ".join(ups)
        + ". An optimizer that climbs when tuned was held back by its shipped defaults; one "
        "that falls does well as shipped but gains less from tuning than the others."
    )


def how_sure(c: dict) -> str:
    """Each track's Friedman p-value and critical difference, in words."""
    parts = []
    for track, row in _friedman(c).items():
        k = int(row["optimizers"])
        parts.append(
            f"{track}: Friedman p = {row['friedman_p']:.3g} over {int(row['blocks'])} "
            f"workloads, critical difference (Nemenyi, α = 0.05) {row['critical_difference']:.2f} "
            f"of the {k - 1} ranks between first and last"
        )
    table = c["table"]
    best = table.sort_values("p_best_tuned", ascending=False).iloc[0]
    return (
        "; ".join(parts)
        + ". Average ranks closer than the critical difference cannot be told apart by the "
        "test, and with so few workloads only the ends of a ranking can. Over resamples of "
        f"the seeds, {best.optimizer} ranks best in the tuned track "
        f"{best.p_best_tuned:.0%} of the time (rank_stability.csv of each track)."
    )


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"optimizer": table["optimizer"]})
    for track in TRACK_NAMES:
        shown[f"rank, {track}"] = table[f"average_rank_{track}"].map("{:.2f}".format)
        shown[f"place, {track}"] = table[f"place_{track}"]
        shown[f"P(best), {track}"] = table[f"p_best_{track}"].map("{:.0%}".format)
    shown["places up when tuned"] = table["places_up"].map("{:+d}".format)
    return shown


def _accuracy_shown(c: dict) -> pd.DataFrame:
    accuracy = c["accuracy"]
    pairs = zip(accuracy["defaults"], accuracy["tuned"], strict=True)
    cells = accuracy.assign(cell=[f"{_accuracy(d)} → {_accuracy(t)}" for d, t in pairs])
    wide = cells.pivot(index="optimizer", columns="workload", values="cell")
    order = list(c["table"]["optimizer"])
    return wide.reindex(order).reset_index()


def _accuracy(value: float) -> str:
    return "diverged" if value != value else f"{value:.4f}"  # NaN: every seed diverged
