"""Where children run: in-process (:class:`LocalExecutor`), side by side in worker processes
(:class:`ProcessExecutor`) or on Ray Tune (:class:`RayExecutor`).

Knows nothing of morphing: a child is an architecture JSON, its weights, a training config
and a data set. ``RayExecutor`` is imported lazily (importing Ray takes a second or two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from morphnas.execute.base import (
    ChildJob,
    ChildResult,
    DatasetSpec,
    EpochCallback,
    Executor,
    child_seed,
    threads_for,
)
from morphnas.execute.child import run_child
from morphnas.execute.local import LocalExecutor
from morphnas.execute.processes import ProcessExecutor

if TYPE_CHECKING:
    from morphnas.execute.ray_executor import RayExecutor

__all__ = [
    "ChildJob", "ChildResult", "DatasetSpec", "EpochCallback", "Executor",
    "LocalExecutor", "ProcessExecutor", "RayExecutor", "child_seed", "run_child", "threads_for",
]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from morphnas.execute.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
