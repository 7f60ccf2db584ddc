"""What a job shows while it trains: a progress bar whose text leads with the mean test
accuracy (so a narrow terminal still shows it), or one log line per evaluation where the
output is not a terminal."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from optbench.labels import counted
from optbench.plan import Schedule

log = logging.getLogger("optbench")


def progress_bar(n_runs: int, schedule: Schedule, done_steps: int, enabled: bool) -> tqdm:
    """A bar of every run's steps; none when output is not a terminal, or not enabled."""
    return tqdm(
        total=schedule.total_steps * n_runs,
        initial=done_steps * n_runs,
        desc=counted(n_runs, "run"),
        unit="step",
        disable=None if enabled else True,  # None: no bar when output is not a terminal
        dynamic_ncols=True,
        # the accuracy first (in desc), so a narrow terminal still shows it
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )


def report_progress(bar: tqdm, evaluated: list[dict], step: int, total_steps: int) -> None:
    """The mean test accuracy of the healthy runs, in the bar, else in the log."""
    healthy = [row["test_accuracy"] for row in evaluated if not row["diverged"]]
    # "—" once every run has diverged: no accuracy to average
    accuracy = f"{sum(healthy) / len(healthy):.4f}" if healthy else "—"
    diverged = len(evaluated) - len(healthy)
    bar.set_description_str(
        f"{counted(len(evaluated), 'run')}, accuracy {accuracy}, {diverged} diverged",
        refresh=False,
    )
    if bar.disable:  # no progress bar (output is not a terminal): one log line instead
        log.info(
            "step %d/%d: mean test accuracy %s over %s (%d diverged)",
            step,
            total_steps,
            accuracy,
            counted(len(healthy), "run"),
            diverged,
        )
