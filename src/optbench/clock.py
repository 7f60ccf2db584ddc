"""The seconds of a trainer's steps, on the CPU and on a GPU (trainers.Trainer.clock)."""

from __future__ import annotations

import time

import torch


class StepClock:
    """The seconds of a trainer's steps. On the CPU a step's kernels have run when it
    returns, so perf_counter around it is its time. On a GPU a step only launches its
    kernels, and perf_counter would time the launches: a CUDA event is recorded before and
    after each step instead, and their elapsed times are read at the next evaluation, which
    synchronises anyway, so the timing adds no synchronisation of its own."""

    def __init__(self, device: torch.device):
        self.events = torch.device(device).type == "cuda"
        self.pending: list[tuple[object, object, float]] = []  # (start, end, share)

    def start(self):
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start, shares: int = 1) -> float:
        """The step's seconds, divided into `shares` (0 on a GPU: read by collect())."""
        if not self.events:
            return (time.perf_counter() - start) / shares
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending.append((start, end, 1 / shares))
        return 0.0

    def collect(self) -> float:
        """The seconds of the GPU steps recorded since the last call (0 on the CPU)."""
        if not self.pending:
            return 0.0
        self.pending[-1][1].synchronize()
        seconds = sum(s.elapsed_time(e) * share for s, e, share in self.pending) / 1000
        self.pending.clear()
        return seconds
