"""Workers: what spreads a job's runs over the CPU's cores. Worker processes (the default
on the CPU): the runs dealt to one process a core, each training its share in the same step
loop, the dataset shared by fork; or worker threads in one process (workers=threads, and
what a worker process trains its share with, with one thread).

Either way every kernel runs on one thread, so a run's numbers do not depend on where or
beside what it trains."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import connection
from pathlib import Path

import torch

from optbench.errors import ResourceError
from optbench.training import checkpoints


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


# ---------------------------------------------------------------------------------------
# Worker processes


def deal(runs: list, count: int) -> list[list]:
    """The runs dealt round robin to `count` workers (fewer where there are fewer runs): the
    runs of one optimizer, which cost alike, spread over every worker."""
    return [part for part in (runs[k::count] for k in range(count)) if part]


def train_in_processes(
    train_part: Callable,
    runs: list,
    parts: list[list],
    identity: dict,
    saved: dict | None,
    checkpoint: Path | None,
    make_progress: Callable,
) -> list[dict]:
    """Train each part of a job's runs in a worker process of its own (forked: the dataset
    already in memory is shared, not copied) with train_part(part, saved_part, sink), and
    gather the rows in the order of the runs, step by step, as one process writes them.

    At every evaluation step, once every part has sent its rows and its state, the whole
    job's checkpoint is written (one file, atomically, by this process alone) and the
    progress reported. A checkpoint of this same job and dealing is resumed: each process
    continues from its part's state. The workers leave Ctrl-C to the job, which stops them
    (as it does on SIGTERM), and die with the job's process even when it is killed; a
    worker that fails or dies stops the others, and its error is raised here."""
    resumed = saved is not None and checkpoints.belongs(saved, identity, checkpoint)
    saved_parts = saved["parts"] if resumed else [None] * len(parts)
    done_steps = saved["step"] if resumed else 0
    context = multiprocessing.get_context("fork")
    processes, readers = [], {}
    try:
        for k, part in enumerate(parts):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_work,
                args=(
                    train_part,
                    part,
                    saved_parts[k],
                    writer,
                    checkpoint is not None,
                    os.getpid(),
                ),
                name=f"optbench-worker-{k + 1}-of-{len(parts)}",
                daemon=True,
            )
            process.start()
            writer.close()  # the worker holds the only writing end: its end is EOF here
            processes.append(process)
            readers[reader] = k
        gathered = _Gathered(runs, parts, identity, checkpoint, make_progress(done_steps))
        gathered.receive(processes, readers)
        gathered.progress.close()
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        for reader in readers:
            reader.close()
    return gathered.in_run_order()


class _Gathered:
    """What the worker processes send, put together: each evaluation step's rows in the order
    of the runs (and the job's checkpoint written once every part's state is in), and each
    part's rows at the end."""

    def __init__(self, runs, parts, identity, checkpoint, progress):
        position = {run: i for i, run in enumerate(runs)}
        self.places = [[position[run] for run in part] for part in parts]  # part -> rows
        self.parts, self.identity, self.checkpoint = parts, identity, checkpoint
        self.progress = progress
        self.waiting: dict[int, dict[int, tuple]] = {}  # step -> part -> (rows, state)
        self.results: dict[int, list[dict]] = {}  # part -> its rows, once done

    def receive(self, processes, readers: dict) -> None:
        """Every message until each worker is done. Raises a worker's error, or
        ResourceError for one that ended without finishing."""
        open_readers = dict(readers)
        while open_readers:
            for reader in connection.wait(list(open_readers)):
                k = open_readers[reader]
                try:
                    message = reader.recv()
                except EOFError:  # the worker's end closed: it is done, or it died
                    del open_readers[reader]
                    if k not in self.results:
                        raise _died(processes[k]) from None
                    continue
                self.take(k, message)

    def take(self, k: int, message: tuple) -> None:
        kind = message[0]
        if kind == "steps":
            self.progress.update(message[1], runs=len(self.parts[k]))
        elif kind == "evaluated":
            _, step, rows, state = message
            self.waiting.setdefault(step, {})[k] = (rows, state)
            if len(self.waiting[step]) == len(self.parts):
                self.evaluated(step, self.waiting.pop(step))
        elif kind == "done":
            self.results[k] = message[1]
        else:  # "failed"
            raise message[1]

    def evaluated(self, step: int, by_part: dict) -> None:
        """Every part's rows at an evaluation step are in: the checkpoint of the whole job,
        then the progress."""
        if self.checkpoint is not None:  # each part's state as its worker serialised it
            states = [by_part[k][1] for k in range(len(self.parts))]
            checkpoints.save(self.checkpoint, {"job": self.identity, "step": step, "parts": states})
        self.progress.report(step, self.merged([by_part[k][0] for k in range(len(self.parts))]))

    def merged(self, blocks: list[list[dict]]) -> list[dict]:
        """One evaluation step's rows of every part, in the order of the runs."""
        rows = [None] * sum(len(places) for places in self.places)
        for places, block in zip(self.places, blocks, strict=True):
            for place, row in zip(places, block, strict=True):
                rows[place] = row
        return rows

    def in_run_order(self) -> list[dict]:
        """The parts' rows as one process writes them: evaluation step by step, each step's
        rows in the order of the runs."""
        by_step = []
        for k, part in enumerate(self.parts):
            rows = self.results[k]
            by_step.append([rows[i : i + len(part)] for i in range(0, len(rows), len(part))])
        return [row for blocks in zip(*by_step, strict=True) for row in self.merged(list(blocks))]


def _died(process) -> ResourceError:
    process.join()
    return ResourceError(
        0,
        f"A worker process ({process.name}) ended without finishing its runs (exit code "
        f"{process.exitcode}; a negative one is the signal that killed it, e.g. -9 when the "
        "machine ran out of memory). Run the same command again to resume from the last "
        "checkpoint, or train in one process with workers=threads.",
    )


class _Sink:
    """A worker process's side of the loop's progress: steps counted and sent now and then,
    and at each evaluation step its rows and (where the job keeps a checkpoint) its state,
    serialised here, while the worker waits."""

    EVERY = 50  # steps between two progress messages

    def __init__(self, writer, with_state: bool):
        self.writer, self.with_state = writer, with_state
        self.steps = 0
        self.state = None  # state(step, rows): the part's state (set by train_part)

    def update(self, steps: int) -> None:
        self.steps += steps
        if self.steps >= self.EVERY:
            self.writer.send(("steps", self.steps))
            self.steps = 0

    def evaluated(self, step: int, new_rows: list[dict], rows: list[dict]) -> None:
        if self.steps:
            self.writer.send(("steps", self.steps))
            self.steps = 0
        # serialised now: a tensor sent as itself would be shared with the training, not copied
        state = checkpoints.to_bytes(self.state(step, rows)) if self.with_state else None
        self.writer.send(("evaluated", step, new_rows, state))


def _work(train_part, part, saved, writer, with_state: bool, job_pid: int) -> None:
    """A worker process: train its part, send its rows, or its error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(job_pid)
    torch.set_num_threads(1)
    try:
        writer.send(("done", train_part(part, saved, _Sink(writer, with_state))))
    except BaseException as error:  # sent to the job, which raises it
        writer.send(("failed", _sendable(error)))
    finally:
        writer.close()


def _sendable(error: BaseException) -> BaseException:
    """The error as it can be sent to the job: itself where it pickles, else a RuntimeError
    with its traceback."""
    with contextlib.suppress(Exception):
        pickle.loads(pickle.dumps(error))
        return error
    return RuntimeError("".join(traceback.format_exception(error)))


def _die_with_parent(job_pid: int) -> None:
    """On Linux, have the kernel kill this worker when the job's process dies (even by
    SIGKILL), so that no worker trains on alone."""
    with contextlib.suppress(Exception):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != job_pid:  # the job died before the call
        os._exit(1)
