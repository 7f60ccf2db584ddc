"""The training layer: the step loop of a job (loop), what trains one run or a group or a
stack of runs (trainers, stack), the worker processes and threads (workers), learning-rate
schedules (lr_schedules), a job's checkpoints and the costs of a step (costs); and the reference
training loop (reference), one run written out in plain PyTorch: the specification of a
step and the engine's test oracle, which the engine never imports. It works on the Plan
and imports only plan, data, models, optimizers, config and the base modules; it writes
no results file but its checkpoint and costs.csv."""
