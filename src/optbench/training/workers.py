"""Workers: the threads that spread a job's trainers over the CPU's cores."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


class Workers:
    """The threads that train a job's runs on the CPU, as a context manager.

    Every kernel runs on one thread (torch.set_num_threads(1) in the calling thread and in
    each worker, restored on exit), and the runs are spread over the workers instead. So a
    run's numbers do not depend on the number of threads either: whichever worker computes
    it, it goes through the same single-threaded kernels. On a GPU the tasks run one after
    another in the calling thread."""

    def __init__(self, count: int, device: torch.device):
        self.count, self.device = count, device
        self.pool = None

    def __enter__(self) -> Workers:
        self.threads_before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        if self.count > 1:
            self.pool = ThreadPoolExecutor(
                self.count, initializer=torch.set_num_threads, initargs=(1,)
            )
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self.threads_before)

    def map(self, tasks: list) -> list:
        """Call every task (a function of no argument); their results in order."""
        if self.pool is None:
            return [task() for task in tasks]
        # one chunk of tasks a worker (a task queued on its own costs more than a small step)
        chunks = [tasks[k :: self.count] for k in range(self.count)]
        done = list(self.pool.map(lambda chunk: [task() for task in chunk], chunks))
        return [done[i % self.count][i // self.count] for i in range(len(tasks))]
