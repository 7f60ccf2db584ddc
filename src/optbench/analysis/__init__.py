"""The analysis layer: what is computed from runs (DataFrames in, DataFrames out): the
summary's statistics and paired tests (stats), the rerun verdict, the published numbers
beside ours, equal-budget tuning, the suite's targets, performance profiles and robust
aggregates. It draws nothing (report draws) and reads no results folder (results reads);
it imports only plan, config and the base modules."""
