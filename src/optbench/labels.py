"""Labels that tell optimizer settings and protocols apart in tables, plots and reports,
and how counts and statistics are written there.

runs.csv names a run's optimizer and carries its hyperparameters as JSON; where one frame
holds several settings of one optimizer, each gets a label naming the keys that differ
("adam lr=0.01", "adam betas=[0.5, 0.9]").
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd

# The columns of runs.csv that name a protocol for the tables and plots: its experiment,
# dataset and model (what a multirun over datasets or models varies). The fingerprint
# (config.schema.fingerprint) is what tells two protocols apart when results are combined.
PROTOCOL_KEYS = ["experiment", "dataset", "model"]


def by_protocol(runs: pd.DataFrame):
    """Yield (protocol, its runs, file-name suffix) for every protocol in runs, a protocol
    named by its PROTOCOL_KEYS values (experiment, dataset, model). The suffix is empty when
    there is one protocol, else "_<experiment>_<dataset>_<model>"."""
    protocols = runs[PROTOCOL_KEYS].drop_duplicates()
    for names in protocols.itertuples(index=False):  # (experiment, dataset, model)
        mask = (runs[PROTOCOL_KEYS] == list(names)).all(axis=1)
        suffix = "" if len(protocols) == 1 else "_" + "_".join(map(str, names))
        yield names, runs[mask], suffix


def label_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose `optimizer` names one setting each: an optimizer trained with several
    settings in one frame gets the hyperparameters that tell them apart in its label,
    "adam lr=0.01", "adam betas=[0.5, 0.9]"; an optimizer with one setting keeps its name."""
    if "hyperparameters" not in runs or runs.empty:
        return runs
    labels = {}
    for name, settings in runs.groupby("optimizer", sort=False)["hyperparameters"]:
        labels |= {(name, text): label for text, label in setting_labels(name, settings).items()}
    label = [labels[pair] for pair in zip(runs["optimizer"], runs["hyperparameters"], strict=True)]
    return runs.assign(optimizer=label)


def setting_labels(name: str, settings) -> dict[str, str]:
    """Each distinct hyperparameters JSON of one optimizer -> its label: the name alone when
    there is one setting, else the name and the keys whose values differ."""
    distinct = list(dict.fromkeys(settings))
    if len(distinct) == 1:
        return {distinct[0]: name}
    parsed = [json.loads(text) for text in distinct]
    keys = sorted({key for p in parsed for key in p if len({repr(q.get(key)) for q in parsed}) > 1})
    return {
        text: name + " " + " ".join(f"{key}={_short(p.get(key))}" for key in keys)
        for text, p in zip(distinct, parsed, strict=True)
    }


def optimizer_configs(runs: pd.DataFrame) -> dict[str, dict]:
    """Every optimizer setting in runs, by its label (see label_settings): for config.yaml."""
    configs = {}
    for name, settings in runs.groupby("optimizer", sort=False)["hyperparameters"]:
        for text, label in setting_labels(name, settings).items():
            configs[label] = {"name": name, **json.loads(text)}
    return configs


def trial_name(optimizer: str, trial: int) -> str:
    """The name of a tuning trial's setting in runs.csv: "adam trial 3"."""
    return f"{optimizer} trial {trial}"


TRIAL = re.compile(r"^(?P<optimizer>.+) trial (?P<trial>\d+)$")  # trial_name's inverse


def counted(n: int, noun: str) -> str:
    """ "1 run", "3 runs": a count with its noun in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    """ "0.9133 ± 0.0153"; the mean alone where there is no spread to give (one seed: std is
    NaN); "—" where there is no mean (every seed diverged)."""
    if not math.isfinite(mean):
        return "—"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def interval(low: float, high: float, digits: int = 4) -> str:
    """ "[0.9001, 0.9265]"; "—" where there is none (fewer than two seeds)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "—"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
