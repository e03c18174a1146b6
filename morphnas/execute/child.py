"""Fine-tune one child: the single function every executor calls, in-process or on a Ray worker.

:func:`run_child` pins torch's threads, seeds, builds the model from the job's architecture and
weights, loads the data set (cached per process), trains, and turns every way a child can end
into a :class:`ChildResult`: trained to the end (``"ok"``), stopped by the epoch callback
(``"pruned"``), or raising (``"failed"``, with the exception's type and message as reason).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from morphnas.execute.base import ChildJob, ChildResult, DatasetSpec, EpochCallback, child_seed
from morphnas.ir import ArchGraph, compile_graph
from morphnas.train import Dataset, EpochReport, load_dataset, pinned_threads, train

DATASET_CACHE_SIZE = 4

EpochHook = Callable[[int, float, torch.nn.Module], bool]
"""``(epoch, val_error, model) -> keep going?``: :data:`EpochCallback` for executors that need the model."""


class _Pruned(Exception):
    """Raised from inside the trainer's epoch hook when the executor's callback says stop."""


class _CallbackError(Exception):
    """Carries an exception raised by the caller's epoch callback past the child's failure handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_DATASETS: OrderedDict[DatasetSpec, Dataset] = OrderedDict()
_DATASETS_LOCK = threading.Lock()


def cached_dataset(spec: DatasetSpec, load: Callable[[], Dataset] | None = None) -> Dataset:
    """The data set ``spec`` names, loaded once per process (the last 4 are kept).

    On a miss, ``load()`` provides it (default: :func:`morphnas.train.load_dataset` with the
    spec's name, data root, split seed and augmentation); Ray workers pass one that fetches it from the object
    store. Errors from loading propagate and nothing is cached.
    """
    with _DATASETS_LOCK:
        if spec in _DATASETS:
            _DATASETS.move_to_end(spec)
            return _DATASETS[spec]
    if load is None:
        data = load_dataset(spec.name, data_root=spec.data_root, split_seed=spec.split_seed, augment=spec.augment,
                            image_size=spec.image_size)
    else:
        data = load()
    with _DATASETS_LOCK:
        _DATASETS[spec] = data
        while len(_DATASETS) > DATASET_CACHE_SIZE:
            _DATASETS.popitem(last=False)
    return data


def cpu_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as detached, contiguous CPU tensors that share nothing with it."""
    return {
        name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in module.state_dict().items()
    }


def run_child(job: ChildJob, on_epoch: EpochCallback | None = None, threads: int | None = None) -> ChildResult:
    """Fine-tune ``job`` in this process and report how it ended; never raises for the child's own faults.

    - threads: torch uses ``threads`` intra-op threads during the call (restored afterwards);
      None keeps ``job.train.threads`` (None there too: the process setting).
    - seed: the run is seeded with :func:`~morphnas.execute.base.child_seed`
      ``(job.train.seed, job.key)`` before the model is built and in the trainer.
    - device: ``job.train.device`` as given (executors set it to ``"cuda"`` for GPU children).
    - ``on_epoch(key, epoch, val_error)`` runs after each epoch; ``False`` stops training and the
      result is ``"pruned"`` with the weights and error after that epoch. An exception from
      ``on_epoch`` is the caller's and propagates unchanged.
    - any ``Exception`` from building, loading or training (a diverging loss, CUDA out of
      memory, ``MemoryError``, a bad architecture) gives ``"failed"`` with ``reason``
      ``"TypeName: message"``; ``history`` keeps the epochs finished before it.

    Returned weights are detached, contiguous CPU tensors.
    """
    if on_epoch is None:
        return run_child_with_model_hook(job, None, threads)
    callback = on_epoch
    return run_child_with_model_hook(job, lambda epoch, val_error, _model: callback(job.key, epoch, val_error), threads)


def run_child_with_model_hook(
    job: ChildJob,
    hook: EpochHook | None = None,
    threads: int | None = None,
    load: Callable[[], Dataset] | None = None,
) -> ChildResult:
    """:func:`run_child` with an epoch hook that also receives the model being trained.

    ``hook(epoch, val_error, model)`` returns whether to keep going, like ``on_epoch``; executors
    use it to snapshot the weights after each epoch (Ray's per-epoch checkpoints). ``load`` is
    passed to :func:`cached_dataset` (Ray workers fetch the data set from the object store).
    """
    started = time.perf_counter()
    history: list[float] = []
    losses: list[float] = []
    threads = threads if threads is not None else job.train.threads
    config = dataclasses.replace(job.train, seed=child_seed(job.train.seed, job.key), threads=threads)
    model: torch.nn.Module | None = None

    def after_epoch(report: EpochReport) -> None:
        history.append(float(report.val_error))
        losses.append(float(report.val_loss))
        if hook is None:
            return
        assert model is not None
        try:
            keep_going = hook(report.epoch, float(report.val_error), model)
        except Exception as err:
            raise _CallbackError(err) from err
        if keep_going is False:
            raise _Pruned

    failure: str | None = None
    with pinned_threads(threads):
        try:
            torch.manual_seed(config.seed)
            model = compile_graph(ArchGraph.from_json(job.arch), job.weights)
            data = cached_dataset(job.dataset, load)
            result = train(model, data, config, on_epoch=after_epoch)
        except _CallbackError as err:
            raise err.error from None
        except _Pruned:
            assert model is not None
            return ChildResult(
                job.key, "pruned", history[-1], history, time.perf_counter() - started, cpu_weights(model),
                val_loss=losses[-1],
            )
        except Exception as err:  # noqa: BLE001 - every fault of the child becomes a failed result
            failure = f"{type(err).__name__}: {err}"
    if failure is not None:
        model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory error, give the memory back to the next child
        return ChildResult(job.key, "failed", None, history, time.perf_counter() - started, None, failure)
    return ChildResult(
        job.key, "ok", float(result.val_error), history, time.perf_counter() - started, cpu_weights(model),
        val_loss=float(result.val_loss), epochs=float(result.epochs),
    )
