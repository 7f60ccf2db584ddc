"""The optimizers layer: building an optimizer from its config (build), pytorch_optimizer's
registry and what each of its optimizers needs (registry), every optimizer a user can
name (catalog) and the textbook update rules (textbook). It imports only config and
errors.

`optbench.optimizers.SparseAdamWithAdam` stays importable under that name: it is the
`_target_` of configs/optimizer/sparse_adam.yaml, recorded in runs.csv."""


def __getattr__(name: str):
    if name == "SparseAdamWithAdam":  # imported on use: build imports torch
        from optbench.optimizers.build import SparseAdamWithAdam

        return SparseAdamWithAdam
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
