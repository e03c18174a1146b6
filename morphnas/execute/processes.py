"""Children side by side on this machine: worker processes that share its cores.

On a CPU a small network uses two cores worse than two networks use one core each, so a
generation's children train faster side by side, one thread each, than one after another on
every thread (``benchmarks/executor_overhead.py`` measures it). A run of fewer children than
workers gives each child the idle cores' threads, so the seed and the final phase, one network
each, still train on all cores.

- Workers are spawned once per executor (a fork would copy torch's thread pools mid-use) and
  reused by every run, so a script that uses this executor guards its entry point with
  ``if __name__ == "__main__":`` (the workers import the script's main module). Each worker
  loads a data set once (cached per process, as Ray workers do). Jobs and results travel
  pickled between the driver and its own workers, never through a file.
- ``on_epoch`` runs in the driver, in the iterating thread, as each epoch's report arrives; the
  worker waits for the answer, so pruning stops a child after the same epoch as in-process.
- A worker that dies (killed, out of memory) fails the children in flight with that reason;
  the next run starts new workers.
- Ctrl-C reaches only the driver (workers ignore SIGINT); :meth:`ProcessExecutor.close` then
  tells every waiting worker to stop its child and shuts the workers down. A worker whose
  driver is gone (killed with SIGKILL) ends itself within a second.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from morphnas.errors import ConfigError
from morphnas.execute.base import (
    ChildJob,
    ChildResult,
    EpochCallback,
    Executor,
    check_devices,
    check_jobs,
    check_resources,
)
from morphnas.execute.child import run_child

POLL_SECONDS = 0.05
WATCH_SECONDS = 0.5

_worker: dict[str, Any] = {}  # in a worker: the queue to the driver and this worker's answers


def _start_worker(reports: Any, answers: list[Any], counter: Any, driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # the driver's pid, not getppid() now: a driver killed while this worker started is gone already
    threading.Thread(target=_exit_with_driver, args=(driver,), daemon=True).start()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _worker.update(index=index, reports=reports, answers=answers[index])


def _exit_with_driver(driver: int) -> None:
    """End this worker once its driver has died (the worker is then someone else's child)."""
    while os.getppid() == driver:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def _train(job: ChildJob, threads: int, live: bool) -> ChildResult:
    def on_epoch(key: int, epoch: int, val_error: float) -> bool:
        _worker["reports"].put((_worker["index"], key, epoch, val_error))
        return bool(_worker["answers"].get())

    return run_child(job, on_epoch if live else None, threads=threads)


class ProcessExecutor(Executor):
    """Fine-tune up to ``workers`` children at once in worker processes of this machine.

    ``workers`` defaults to the cores this process may use; each child of a full run gets
    ``cores // workers`` torch threads, a run of fewer children the idle cores' threads too.
    ``gpus_per_child > 0`` trains on ``"cuda"`` (refused when torch finds no CUDA device).
    """

    def __init__(self, workers: int | None = None, gpus_per_child: float = 0) -> None:
        self.cores = len(os.sched_getaffinity(0))
        self.workers = self.cores if workers is None else workers
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        self.cpus_per_child = max(1, self.cores // self.workers)
        check_resources(self.cpus_per_child, gpus_per_child)
        check_devices(gpus_per_child)
        self.gpus_per_child = gpus_per_child
        self._pool: ProcessPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._reports = context.Queue()
            self._answers = [context.Queue() for _ in range(self.workers)]
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                             initargs=(self._reports, self._answers, context.Value("i", 0),
                                                       os.getpid()))
        return self._pool

    def run(self, jobs: list[ChildJob], on_epoch: EpochCallback | None = None) -> Iterator[ChildResult]:
        """Yield each child's result as it finishes; ``on_epoch`` as :meth:`Executor.run` says."""
        check_jobs(jobs)
        if not jobs:
            return
        pool = self._start()
        threads = max(1, self.cores // min(self.workers, len(jobs)))
        if self.gpus_per_child > 0:
            jobs = [dataclasses.replace(job, train=dataclasses.replace(job.train, device="cuda")) for job in jobs]
        futures: dict[Future, ChildJob] = {pool.submit(_train, job, threads, on_epoch is not None): job
                                           for job in jobs}
        pending = set(futures)
        try:
            while pending:
                self._answer(on_epoch)
                # polled, not concurrent.futures.wait(): a Ctrl-C inside wait() can leave a future's
                # lock held, and the pool's manager thread then never finishes (a hang seen once)
                done = {future for future in pending if future.done()}
                if not done:
                    time.sleep(POLL_SECONDS)
                pending -= done
                for future in done:
                    yield self._result(futures[future], future)
        finally:
            if pending:  # stopped early: on_epoch raised, Ctrl-C, or the caller stopped iterating
                self.close()

    def _answer(self, on_epoch: EpochCallback | None) -> None:
        """Pass every epoch report that has arrived to ``on_epoch`` and its answer back to the worker."""
        while True:
            try:
                index, key, epoch, val_error = self._reports.get_nowait()
            except queue.Empty:
                return
            keep_going = on_epoch(key, epoch, val_error) is not False if on_epoch is not None else True
            self._answers[index].put(keep_going)

    def _result(self, job: ChildJob, future: Future) -> ChildResult:
        try:
            return future.result()
        except BrokenProcessPool as err:  # a worker died: its pool is of no more use
            self._pool = None
            return ChildResult(job.key, "failed", None, reason=f"worker process died: {err}")

    def close(self) -> None:
        """Stop the children in flight (each after its current epoch) and the workers; idempotent."""
        if self._pool is None:
            return
        for answers in self._answers:
            answers.put(False)  # a worker waiting for an answer stops its child
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

