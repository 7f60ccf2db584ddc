"""The report layer: every figure and table a reader sees, drawn from runs and what
analysis computed: the comparison plots, the ranking's tables, the tuning curve, the
suite's figures and report, report.md/.html and the final table on screen (answer). It
imports results, analysis and the base modules."""
