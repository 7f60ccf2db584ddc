"""The results layer: a results folder's files. runs.csv and summary.csv written, read
back and checked, and resumed from (store); config.yaml with the provenance of every run
(provenance); checksums.sha256 (checksums); a multirun's jobs combined (multirun); the
TensorBoard and MLflow loggers. It imports analysis (the summary), plan, config and the
base modules."""
