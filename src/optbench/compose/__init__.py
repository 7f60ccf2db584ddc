"""The compose layer: a command line made into checked jobs. Its words checked against the
schema (overrides), every job composed by Hydra, checked before any training (checks,
optimizer_checks) and made a Plan (jobs). The composed DictConfig stops here: the layers
below receive a Plan, dicts and DataFrames. It may import every layer below it."""
