"""`optbench.textbook.<Name>` is how the textbook optimizers' configs name them
(`_target_`), and runs.csv records it in every run's hyperparameters: this name stays
importable. The classes live in optbench.optimizers.textbook."""

from optbench.optimizers.textbook import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Momentum,
    Nesterov,
    RMSprop,
)

__all__ = [
    "SGD",
    "Momentum",
    "Nesterov",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adam",
    "AdamW",
    "Adamax",
]
