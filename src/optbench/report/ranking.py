"""ranking.csv, ranking_pairs.csv and ranking.md: the paired tests of analysis.stats
written for a reader."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from optbench.analysis import stats
from optbench.files import atomic_write, write_csv

RANKING_CSV = "ranking.csv"


def write_ranking(results_dir: Path, runs: pd.DataFrame, metric="test_accuracy", ranked=None):
    """ranking.csv, ranking_pairs.csv (every pair's tests) and ranking.md for every protocol
    in runs with two or more optimizer settings (their stats.rankings, computed unless
    given); return the files written."""
    results_dir = Path(results_dir)
    written = []
    ranked = stats.rankings(runs, metric) if ranked is None else ranked
    for suffix, (table, pairs) in ranked.items():
        csv_path = results_dir / f"ranking{suffix}.csv"
        pairs_path = results_dir / f"ranking_pairs{suffix}.csv"
        md_path = results_dir / f"ranking{suffix}.md"
        write_csv(table, csv_path)
        write_csv(pairs, pairs_path)
        text = stats.ranking_markdown(table, pairs, metric)
        atomic_write(md_path, lambda tmp, text=text: tmp.write_text(text))
        written += [csv_path, pairs_path, md_path]
    return written
