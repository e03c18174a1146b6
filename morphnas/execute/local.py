"""In-process execution: children one after another in the calling process."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from morphnas.execute.base import (
    ChildJob,
    ChildResult,
    EpochCallback,
    Executor,
    check_devices,
    check_jobs,
    check_resources,
    threads_for,
)
from morphnas.execute.child import run_child


class LocalExecutor(Executor):
    """Fine-tune children sequentially in this process (the default executor, and the tests').

    Each child runs with ``threads_for(cpus_per_child)`` torch threads (the process setting is
    restored after each child) and, when ``gpus_per_child > 0``, on ``"cuda"`` (refused with
    ConfigError when torch finds no CUDA device); otherwise on its job's device. ``on_epoch`` is
    called live, between the child's epochs, so pruning stops a child at once. Nothing to
    release: :meth:`close` is a no-op.
    """

    def __init__(self, cpus_per_child: float = 1, gpus_per_child: float = 0) -> None:
        check_resources(cpus_per_child, gpus_per_child)
        check_devices(gpus_per_child)
        self.cpus_per_child = cpus_per_child
        self.gpus_per_child = gpus_per_child
        self.threads = threads_for(cpus_per_child)

    def run(self, jobs: list[ChildJob], on_epoch: EpochCallback | None = None) -> Iterator[ChildResult]:
        """Yield each child's result right after training it, in the order of ``jobs``."""
        check_jobs(jobs)
        for job in jobs:
            if self.gpus_per_child > 0:
                job = dataclasses.replace(job, train=dataclasses.replace(job.train, device="cuda"))
            yield run_child(job, on_epoch, threads=self.threads)
