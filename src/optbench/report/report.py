"""One report per results folder: report.md beside the plots, and a self-contained
report.html (tables inline, plots embedded as data URIs) that opens anywhere without
optbench. Both are built from the files on disk alone."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from optbench.analysis import published, stats
from optbench.files import atomic_write
from optbench.labels import TRIAL, counted, interval, label_settings, mean_std
from optbench.report.ranking import RANKING_CSV
from optbench.results.provenance import CONFIG_YAML
from optbench.results.store import read_runs, summarize

PLOTS = [  # file, caption
    ("test_accuracy.png", "Test accuracy against step (mean ± std over seeds)"),
    ("test_loss.png", "Test loss against step"),
    ("train_loss.png", "Training loss against step"),
    ("final_test_accuracy.png", "Final test accuracy of every seed"),
    ("lr_sensitivity.png", "Final test accuracy against learning rate"),
    ("tuning.png", "Expected best accuracy against tuning trials (equal budgets)"),
    ("costs.png", "Final accuracy against optimizer state and time per step"),
]


def _final_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every optimizer: the mean alone where one seed gives no
    spread, "—" where there is no interval or every seed diverged."""
    final = stats.final_rows(summary)

    def column(metric: str, what: str) -> list[str]:
        if what == "mean ± std":
            pairs = zip(final[f"{metric}_mean"], final[f"{metric}_std"], strict=True)
            return [mean_std(m, s) for m, s in pairs]
        pairs = zip(final[f"{metric}_ci_low"], final[f"{metric}_ci_high"], strict=True)
        return [interval(lo, hi) for lo, hi in pairs]

    table = pd.DataFrame(
        {
            "optimizer": final["optimizer"],
            "step": final["step"],
            "test accuracy: mean ± std": column("test_accuracy", "mean ± std"),
            "95% CI": column("test_accuracy", "interval"),
            "median [IQR]": [
                f"{m:.4f} [{i:.4f}]"
                for m, i in zip(
                    final["test_accuracy_median"], final["test_accuracy_iqr"], strict=True
                )
            ],
            "test loss": column("test_loss", "mean ± std"),
            "seeds": final["n"],
            "diverged": final["n_diverged"],
            "training s": [f"{w:.1f}" for w in final["wall_s_mean"]],
        }
    )
    measured = ["test accuracy: mean ± std", "95% CI", "median [IQR]", "test loss", "training s"]
    table.loc[(final["n"] == 0).to_numpy(), measured] = "—"
    return table


def _optimizer_count(runs: pd.DataFrame) -> str:
    """ "8 optimizers", "1 optimizer in 2 settings" where one was trained with several, or
    "2 optimizers × 16 trials" for a tuning folder's trials."""
    trials = runs["optimizer"].drop_duplicates().str.extract(TRIAL)
    if len(trials) and trials["optimizer"].notna().all():
        sizes = trials.groupby("optimizer", sort=False).size()
        each = counted(sizes.iloc[0], "trial") if sizes.nunique() == 1 else "their trials"
        return f"{counted(len(sizes), 'optimizer')} × {each}"
    names, settings = runs["optimizer"].nunique(), label_settings(runs)["optimizer"].nunique()
    counted_names = counted(names, "optimizer")
    return counted_names if settings == names else f"{counted_names} in {settings} settings"


def _diverged_text(runs: pd.DataFrame) -> str:
    """Which runs diverged, and from which evaluation on; empty when none did."""
    runs = label_settings(runs)  # one label per optimizer setting
    bad = runs[runs["diverged"].astype(bool)]
    if bad.empty:
        return ""
    first = bad.groupby(["optimizer", "seed"], sort=False)["step"].min().reset_index()
    total = counted(runs[["optimizer", "seed"]].drop_duplicates().shape[0], "run")
    parts = [
        f"{optimizer} " + ", ".join(f"seed {r.seed} from step {r.step}" for r in g.itertuples())
        for optimizer, g in first.groupby("optimizer", sort=False)
    ]
    return (
        f"{len(first)} of {total} diverged (a loss NaN, infinite or above 2^24) and are "
        f"left out of every mean, interval, test and plot: {'; '.join(parts)}."
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _provenance_text(config_path: Path) -> str:
    """What produced the runs, from config.yaml's provenance, on one line."""
    provenance = OmegaConf.to_container(OmegaConf.load(config_path).get("provenance", {}))
    shown = ("optbench_version", "git_revision", "torch_version", "device_name", "overrides")
    return "; ".join(f"{key}: {value}" for key, value in provenance.items() if key in shown)


def _costs_table(costs: pd.DataFrame) -> pd.DataFrame:
    """costs.csv as the report shows it: state in bytes per parameter and in total."""
    shown = ["optimizer", "state_bytes_per_param", "state_bytes", "ms_per_step", "device"]
    return costs[shown].round(3)


def _ranking_table(
    results_dir: Path, runs: pd.DataFrame, n_protocols: int, table: pd.DataFrame | None
):
    """The ranking as write_ranking wrote it just before (given, else ranking.csv), else
    computed for one protocol with several settings; None where there is nothing to rank."""
    if table is None and (results_dir / RANKING_CSV).is_file():
        table = pd.read_csv(results_dir / RANKING_CSV)
    elif table is None and label_settings(runs)["optimizer"].nunique() > 1 and n_protocols == 1:
        table, _ = stats.ranking(label_settings(runs))
    if table is None:
        return None
    tested = table["n"] > 1  # one seed: no spread, no interval, no test
    return pd.DataFrame(
        {
            "rank": table["rank"],
            "optimizer": table["optimizer"],
            "mean ± std": list(map(mean_std, table["mean"], table["std"])),
            "n": table["n"],
            "95% CI": list(map(interval, table["ci_low"], table["ci_high"])),
            "p vs best (Holm)": [
                f"{p:.3g}" if ok else "—"
                for p, ok in zip(table["p_vs_best_holm"], tested, strict=True)
            ],
            "≈ best": (table["tied_with_best"] & tested).map({True: "≈", False: ""}),
        }
    )


def _published_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The published final numbers beside ours, as the report shows them."""
    final = comparison[comparison["metric"].isin(["final_test_accuracy", "test_loss"])]
    ours = list(map(mean_std, final["mean"], final["std"]))
    z = ["—" if pd.isna(v) else f"{v:+.1f}" for v in final["z"]]
    shown = ["optimizer", "step", "epoch", "metric", "published", "n", "min", "max", "flagged"]
    final = final[shown].round(4)
    final.insert(final.columns.get_loc("n"), "ours: mean ± std", ours)
    final.insert(final.columns.get_loc("flagged"), "z", z)
    return final  # comparison.md has the rest


def _sections(results_dir: Path, given: dict) -> tuple[str, list[tuple[str, str, object]]]:
    """The report's title and its sections as (heading, kind, content) with kind one of
    "text", "table" (a DataFrame) or "image" (a file name). What `given` holds (see
    write_report) is used as it is; the rest is read from the folder or computed."""
    runs = given["runs"] if given.get("runs") is not None else read_runs(results_dir)
    protocol = runs[["experiment", "dataset", "model"]].drop_duplicates()
    title = "optbench report: " + "; ".join(
        f"{p.experiment} protocol, {p.dataset}, {p.model}" for p in protocol.itertuples()
    )
    summary = given["summary"] if given.get("summary") is not None else summarize(runs)
    seeds = sorted(runs["seed"].unique())
    sections = [
        (
            "Runs",
            "text",
            f"{_optimizer_count(runs)} × {counted(len(seeds), 'seed')} "
            f"({', '.join(map(str, seeds))}); {counted(len(runs), 'evaluation')} in runs.csv.",
        )
    ]
    if (results_dir / CONFIG_YAML).is_file():
        sections.append(("Provenance", "text", _provenance_text(results_dir / CONFIG_YAML)))
    sections.append(("Final results", "table", _final_table(summary)))
    diverged = _diverged_text(runs)
    if diverged:
        sections.append(("Diverged runs", "text", diverged))
    costs = given.get("costs")
    if costs is None and (results_dir / "costs.csv").is_file():
        costs = pd.read_csv(results_dir / "costs.csv")
    if costs is not None:
        sections.append(("What each optimizer costs", "table", _costs_table(costs)))
    table = _ranking_table(results_dir, runs, len(protocol), given.get("ranking"))
    if table is not None:
        sections.append(("Ranking (paired t-tests by seed, Holm-corrected)", "table", table))
    compared = given.get("comparisons")
    for experiment, comparison in (compared or published.comparisons(runs)).items():
        if comparison is not None:
            heading = f"Published one-seed numbers ({experiment})"
            sections.append((heading, "table", _published_table(comparison)))
    for name, caption in PLOTS:
        if (results_dir / name).is_file():
            sections.append((caption, "image", name))
    return title, sections


def write_report(results_dir, **given) -> list[Path]:
    """Write report.md and report.html into results_dir; return their paths. From the
    folder's files, or from what a job has just computed and written there, given as it
    was written: runs (store.as_written), summary, ranking (ranking.csv's table),
    comparisons (published.comparisons) and costs (costs.csv's table)."""
    results_dir = Path(results_dir)
    title, sections = _sections(results_dir, given)
    return render(results_dir, "report", title, sections)


def render(folder: Path, stem: str, title: str, sections: list) -> list[Path]:
    """Write <stem>.md and a self-contained <stem>.html (images embedded) into folder from
    sections (heading, kind, content), kind one of "text", "table" (a DataFrame), "image"
    (a file in folder) or "links" (a list of (label, relative path)); return their paths."""
    markdown = [f"# {title}", ""]
    page = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right;white-space:nowrap}img{max-width:100%}"
        ".wide{overflow-x:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, kind, content in sections:
        markdown += [f"## {heading}", ""]
        page.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "text":
            markdown += [content, ""]
            page.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            markdown += [_markdown_table(content), ""]
            # a wide table (15 optimizers' pairs) scrolls inside the page, not the page
            page.append(f"<div class='wide'>{content.to_html(index=False, na_rep='')}</div>")
        elif kind == "links":
            markdown += [" · ".join(f"[{label}]({href})" for label, href in content), ""]
            page.append(
                "<p>"
                + " · ".join(
                    f"<a href='{html.escape(href)}'>{html.escape(label)}</a>"
                    for label, href in content
                )
                + "</p>"
            )
        else:
            markdown += [f"![{heading}]({content})", ""]
            encoded = base64.b64encode((folder / content).read_bytes()).decode()
            page.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{encoded}'>")
    page.append("</body></html>")
    md_path, html_path = folder / f"{stem}.md", folder / f"{stem}.html"
    md_text, html_text = "\n".join(markdown), "\n".join(page)
    atomic_write(md_path, lambda tmp: tmp.write_text(md_text))
    atomic_write(html_path, lambda tmp: tmp.write_text(html_text))
    return [md_path, html_path]
