"""Equal tuning budgets: the same number of random-search trials for every optimizer.

Comparing optimizers at their defaults favours whichever default suits the problem. Here
each optimizer gets `tuning.trials` trials whose hyperparameters optuna's RandomSampler
draws from the same kind of space:

    lr            log-uniform in [configured lr / 100, configured lr x 100]; for the
                  learning-rate-free (Prodigy, D-Adaptation) in [lr / 10, lr x 10]
    weight decay  log-uniform in [1e-5, 0.1], for optimizers that take one
    momentum      uniform in [0, 0.99], for optimizers whose configured momentum is non-zero
    betas         beta1 uniform in [0.8, 0.99], beta2 log-uniform in 1 - [1e-4, 0.1]
    warmup        with a warmup schedule: whole steps uniform in [0, a quarter of the
                  training]; the schedule-free optimizers search their own warmup_steps
                  likewise, and train under a constant schedule whatever the protocol's

Every choice is made on a validation set held out of the training data, never on the test
set: the trials are evaluated on the protocol's validation set, or, where it has none, on
one `optbench tune` holds out itself (plan.choosing_on_validation). From the trials' final
validation accuracies, the expected best accuracy after k trials (k = 1..n) is estimated
by resampling the trials (k drawn with replacement, the best kept, many times): the
"expected validation performance" curve of Dodge et al. (2019). Optimizers are then
compared at equal budget k rather than at one lucky or unlucky setting; the best trial
(the highest validation accuracy) is the one `optbench suite tuning.trials=K` trains.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping

import numpy as np
import optuna
import pandas as pd

from optbench.analysis import stats
from optbench.analysis.stats import RESAMPLES
from optbench.errors import ConfigError
from optbench.labels import trial_name
from optbench.optimizers.traits import is_schedule_free
from optbench.plan import OptimizerSpec

# Learning-rate-free optimizers: their lr multiplies the step size they estimate (1.0 is
# the method itself), so a decade either side of it is searched rather than two.
LR_FREE = ("prodigy", "dadaptadagrad", "dadaptadam", "dadaptadan", "dadaptlion", "dadaptsgd")


def search_space(
    optimizer: Mapping, schedule: Mapping | None = None, total_steps: int = 0
) -> dict[str, optuna.distributions.BaseDistribution]:
    """What a trial draws for an optimizer config (docs/statistics.md has the table): lr
    (log-uniform over two decades either side of its configured lr; one decade for the
    learning-rate-free, LR_FREE), weight decay where it has one (log-uniform in
    [1e-5, 0.1]), momentum where it has one, Adam's betas where it has them, and a warmup
    length (a whole number of steps from 0 to a quarter of the training) where the
    schedule has one. A schedule-free optimizer averages its iterates in place of a schedule:
    its trials search its own warmup (`warmup_steps`) and train under a constant schedule,
    whatever schedule the protocol has."""
    space = {}
    if optimizer.get("lr") is not None:  # A2Grad has none: it sets its own step size
        lr = float(optimizer["lr"])
        span = 10 if str(optimizer.get("name")) in LR_FREE else 100
        space["lr"] = optuna.distributions.FloatDistribution(lr / span, lr * span, log=True)
    if "weight_decay" in optimizer:
        space["weight_decay"] = optuna.distributions.FloatDistribution(1e-5, 0.1, log=True)
    if float(optimizer.get("momentum", 0.0) or 0.0) > 0:
        space["momentum"] = optuna.distributions.FloatDistribution(0.0, 0.99)
    if "betas" in optimizer:
        space["beta1"] = optuna.distributions.FloatDistribution(0.8, 0.99)
        space["one_minus_beta2"] = optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    if is_schedule_free(optimizer) and "warmup_steps" in optimizer:  # a warmup of its own
        space["own_warmup_steps"] = optuna.distributions.IntDistribution(0, total_steps // 4)
    elif schedule is not None and "warmup_steps" in schedule:
        space["warmup_steps"] = optuna.distributions.IntDistribution(0, total_steps // 4)
    return space


def sample_trials(
    optimizers: list[OptimizerSpec],
    trials: int,
    seed: int,
    schedule: Mapping | None = None,
    total_steps: int = 0,
) -> tuple[list[OptimizerSpec], pd.DataFrame]:
    """`trials` random settings per optimizer, named "<optimizer> trial <i>"; and a table
    of what was drawn (optimizer, trial, name, and each hyperparameter)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, drawn = [], []
    for index, optimizer in enumerate(optimizers):
        sampler = optuna.samplers.RandomSampler(seed=seed + index)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        space = search_space(optimizer.config, schedule, total_steps)
        for trial_number in range(trials):
            params = study.ask(space).params
            config = copy.deepcopy(optimizer.config)
            config["name"] = trial_name(optimizer.name, trial_number)
            for key, value in params.items():
                if key == "beta1":
                    config["betas"] = [value, *config["betas"][1:]]
                elif key == "one_minus_beta2":  # AdEMAMix's third beta stays
                    config["betas"] = [config["betas"][0], 1 - value, *config["betas"][2:]]
                elif key == "warmup_steps":  # the trial's own schedule (lr_schedules.of_setting)
                    config["schedule"] = {"warmup_steps": value}
                elif key == "own_warmup_steps":  # the optimizer's own warmup argument,
                    config["warmup_steps"] = value  # under no schedule of the protocol's
                    if schedule is not None and schedule.get("name", "constant") != "constant":
                        config["schedule"] = {"name": "constant"}
                else:
                    config[key] = value
            settings.append(OptimizerSpec.of(config))
            drawn.append(
                {
                    "optimizer": optimizer.name,
                    "trial": trial_number,
                    "name": config["name"],
                    **params,
                }
            )
    return settings, pd.DataFrame(drawn)


def expected_best(values: np.ndarray, k: int, rng: np.random.Generator) -> dict[str, float]:
    """The best of k trials drawn with replacement, resampled: its mean, std, and 10% and
    90% quantiles (the band of the plot, which stays within the trials' range)."""
    draws = rng.choice(np.asarray(values, dtype=float), size=(RESAMPLES, k), replace=True)
    best = draws.max(axis=1)
    q10, q90 = np.quantile(best, [0.1, 0.9])
    return {
        "expected_best": float(best.mean()),
        "std": float(best.std(ddof=1)),
        "q10": float(q10),
        "q90": float(q90),
    }


def expected_best_exact(values: np.ndarray, k: int) -> float:
    """The same expectation in closed form: with the n values sorted,
    E[max of k] = sum_i v_(i) ((i/n)^k - ((i-1)/n)^k)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    i = np.arange(1, n + 1)
    return float(np.sum(v * ((i / n) ** k - ((i - 1) / n) ** k)))


def tuning_tables(runs: pd.DataFrame, drawn: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per trial: its hyperparameters and final validation accuracy (mean over its seeds; 0
    for a diverged trial, the accuracy of guessing or worse), and its final test accuracy
    beside it, reported, never chosen on. Per optimizer and budget k: the expected best
    validation accuracy and its resampling std."""
    final = validated_final_rows(runs)
    healthy = ~final["diverged"].astype(bool)
    trials = drawn
    for metric in ("validation_accuracy", "test_accuracy"):
        accuracy = final.assign(**{metric: final[metric].where(healthy, 0.0)})
        means = accuracy.groupby("optimizer")[metric].mean()
        trials = trials.assign(**{f"final_{metric}": drawn["name"].map(means)})
    rng = np.random.default_rng(0)
    curve = []
    for name, rows in trials.groupby("optimizer", sort=False):
        values = rows["final_validation_accuracy"].to_numpy()
        for k in range(1, len(values) + 1):
            curve.append({"optimizer": name, "trials": k, **expected_best(values, k, rng)})
    return trials, pd.DataFrame(curve)


def validated_final_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Each trial's rows at its last evaluation; ConfigError where the trials were not
    evaluated on a validation set (a choice is never made on the test set)."""
    if "validation_accuracy" not in runs:
        raise ConfigError(
            "These tuning trials have no validation_accuracy: they were trained on a protocol "
            "without a validation set, and optbench chooses on validation data only. Run the "
            "tuning again (optbench tune holds out a validation set of its own)."
        )
    return stats.final_rows(runs)


def best_settings(runs: pd.DataFrame, optimizers: list[OptimizerSpec]) -> list[OptimizerSpec]:
    """Each optimizer's best trial (highest mean final validation accuracy over its seeds; a
    diverged run counts 0), as a setting under the optimizer's own name. The test set plays
    no part in the choice."""
    final = validated_final_rows(runs)
    accuracy = final["validation_accuracy"].where(~final["diverged"].astype(bool), 0.0)
    means = (
        final.assign(validation_accuracy=accuracy)
        .groupby(["optimizer", "hyperparameters"], sort=False)["validation_accuracy"]
        .mean()
    )
    best = []
    for spec in optimizers:
        mine = means[[name.startswith(f"{spec.name} trial ") for name, _ in means.index]]
        _, hyperparameters = mine.idxmax()
        best.append(OptimizerSpec.of({"name": spec.name, **json.loads(hyperparameters)}))
    return best
