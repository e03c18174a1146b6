"""The executor interface: what a child job is and what comes back.

An :class:`Executor` fine-tunes a batch of children (:class:`ChildJob`) and yields one
:class:`ChildResult` per job as soon as that child finishes, in completion order. Strategies:

- :class:`~morphnas.execute.local.LocalExecutor` runs the children one after another in the
  calling process (the default, and what tests use);
- :class:`~morphnas.execute.ray_executor.RayExecutor` runs them in parallel as Ray Tune trials,
  on a local Ray or an existing cluster, with fractional CPUs and GPUs per child.

A search takes its executor as an object; the factory from names (``--executor local|ray``) is
at the edge, :func:`morphnas.cli.search.make_executor`.

Both call :func:`morphnas.execute.child.run_child` for each child, so on the CPU the same job
gives the same validation errors and weights with either executor: the child is seeded from
(search seed, trial number) and its torch threads are pinned to ``threads_for(cpus_per_child)``.
"""

from __future__ import annotations

import abc
import math
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import numpy as np
import torch

from morphnas.errors import ConfigError
from morphnas.train import TrainConfig

_E = TypeVar("_E", bound="Executor")

EpochCallback = Callable[[int, int, float], bool]
"""``(key, epoch, val_error) -> keep going?``; returning ``False`` prunes the child."""


@dataclass(frozen=True)
class DatasetSpec:
    """Names a data set for :func:`morphnas.train.load_dataset`; hashable, so processes cache by it."""

    name: str
    data_root: str | None = None
    split_seed: int = 0
    augment: bool | str = True
    image_size: int = 32


@dataclass
class ChildJob:
    """One child to fine-tune.

    ``key`` is the Optuna trial number and must be unique within one :meth:`Executor.run` call.
    ``arch`` is the architecture JSON (``ArchGraph.to_json()``) and ``weights`` its full flat
    weights dict (loaded strictly). ``train.seed`` is the *search* seed: the child trains with
    ``child_seed(train.seed, key)``, so every child gets its own stream, reproducible from
    (search seed, trial number). ``train.threads`` is overridden by the executor's thread count.
    """

    key: int
    arch: dict
    weights: dict[str, torch.Tensor]
    train: TrainConfig
    dataset: DatasetSpec


@dataclass
class ChildResult:
    """What came of one :class:`ChildJob`.

    ``status`` is ``"ok"`` (trained to the end), ``"pruned"`` (stopped by the epoch callback;
    ``val_error`` and ``weights`` are those after the last finished epoch) or ``"failed"``
    (``reason`` says why as ``"ExceptionType: message"``; ``weights`` is None and ``val_error``
    None). ``history`` holds the validation error after each finished epoch (also for failed
    children, up to the failure). ``weights`` are detached, contiguous CPU tensors. ``val_loss``
    is the mean validation cross-entropy that goes with ``val_error`` (None when unknown).
    ``node`` is the Ray node the child trained on (None when it trained on this machine).
    ``epochs`` is how many epochs it trained, fractional when a time limit or deadline cut the
    last one (None when unknown: then ``len(history)``).
    """

    key: int
    status: str
    val_error: float | None
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    weights: dict[str, torch.Tensor] | None = None
    reason: str | None = None
    val_loss: float | None = None
    node: str | None = None
    epochs: float | None = None

    @property
    def epochs_trained(self) -> float:
        return float(len(self.history)) if self.epochs is None else self.epochs


def child_seed(search_seed: int, key: int) -> int:
    """The training seed of child ``key`` (trial number) in a search seeded with ``search_seed``.

    Mixed with numpy's ``SeedSequence`` so neighbouring trial numbers get unrelated streams; a
    31-bit non-negative integer, the same in every process and on every machine.
    """
    if search_seed < 0 or key < 0:
        raise ConfigError(f"seeds and trial numbers must be >= 0, got seed {search_seed} and key {key}")
    return int(np.random.SeedSequence([search_seed, key]).generate_state(1, dtype=np.uint32)[0] >> 1)


def threads_for(cpus_per_child: float) -> int:
    """Torch threads of a child given its CPUs: the whole CPUs, at least one (0.5 CPU -> 1 thread)."""
    return max(1, math.floor(cpus_per_child))


class Executor(abc.ABC):
    """Runs children and yields their results as they finish.

    Subclasses implement :meth:`run` only. An executor may hold resources (a Ray runtime, a
    storage directory): release them with :meth:`close` or use it as a context manager.
    """

    cpus_per_child: float
    gpus_per_child: float = 0.0

    @abc.abstractmethod
    def run(self, jobs: list[ChildJob], on_epoch: EpochCallback | None = None) -> Iterator[ChildResult]:
        """Fine-tune ``jobs`` and yield one :class:`ChildResult` per job, each as soon as it finishes.

        ``on_epoch(key, epoch, val_error)`` is called after each finished epoch of each child,
        always in the thread that iterates this generator and never concurrently with itself;
        returning ``False`` prunes that child (status ``"pruned"``). An exception raised by
        ``on_epoch`` propagates out of the iteration and stops the remaining children. A child
        that raises comes back as status ``"failed"`` and does not stop the others. Keys must be
        unique (:class:`~morphnas.errors.ConfigError` otherwise); an empty list yields nothing.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release what the executor holds; idempotent. The base class holds nothing."""

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_jobs(jobs: list[ChildJob]) -> None:
    """ConfigError unless the job keys are unique."""
    keys = [job.key for job in jobs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"child job keys must be unique, repeated: {duplicates}")


def check_resources(cpus_per_child: float, gpus_per_child: float) -> None:
    """ConfigError unless ``cpus_per_child > 0`` and ``gpus_per_child >= 0`` (both finite)."""
    if not (math.isfinite(cpus_per_child) and cpus_per_child > 0):
        raise ConfigError(f"cpus_per_child must be > 0, got {cpus_per_child}")
    if not (math.isfinite(gpus_per_child) and gpus_per_child >= 0):
        raise ConfigError(f"gpus_per_child must be >= 0, got {gpus_per_child}")


def check_devices(gpus_per_child: float) -> None:
    """ConfigError when children on this machine are to use a GPU share and torch finds no CUDA device."""
    if gpus_per_child > 0 and not torch.cuda.is_available():
        raise ConfigError(
            f"gpus_per_child is {gpus_per_child:g} but torch finds no CUDA device on this machine; "
            "use 0 to train on the CPU"
        )


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """ConfigError unless ``host:port`` (or ``ray://host:port``) accepts a TCP connection within ``timeout`` s.

    ``ray.init`` retries an address that does not answer for minutes; this fails in seconds.
    Other forms (``auto``, ``local``) are left to Ray.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None
