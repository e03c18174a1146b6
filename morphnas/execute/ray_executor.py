"""Parallel execution on Ray Tune: each child is one trial with fractional CPUs and GPUs.

How a child travels (written for Ray 2.60's ``ray.tune`` API):

- Each :class:`ChildJob` is ``ray.put`` into the object store; the trainable receives the dict of
  object references through ``tune.with_parameters`` and the trial's ``param_space`` entry
  (``tune.grid_search`` over the job keys) says which job to fetch. Nothing goes through the
  driver's disk, so workers on other nodes get their jobs too.
- The worker calls :func:`~morphnas.execute.child.run_child_with_model_hook` with
  ``threads_for(cpus_per_child)`` torch threads and reports every epoch with ``tune.report``.
  Children's weights come back through Ray, never through a disk: the worker hands them as
  safetensors bytes (``safetensors.torch.save``; no pickle) to a small ``_Mailbox`` actor that
  :meth:`RayExecutor.run` starts on the driver's node (0 CPUs, one per run, killed when the run
  ends), and the driver takes them from it when Tune reports the trial complete. Metrics and
  the epoch history travel in the trial's reported results. Tune writes no checkpoints, so a
  worker on a node that shares no disk with the driver returns its child like any other.
- Tune still keeps its own experiment state (trial parameters, results; never weights) under
  ``storage_path``, which only the driver uses: a temporary directory by default, one
  ``morphnas-<id>`` sub-directory per run removed as soon as the run ends. A node-local path
  is therefore fine on a multi-node cluster, and a path the user gives (local, NFS, ``s3://``)
  keeps that state for inspection and is never needed to return a result.
- ``Tuner.fit`` runs in a background thread of the driver. A ``tune.Callback`` and a
  ``tune.Stopper`` hand events to :meth:`RayExecutor.run`, which yields each result as soon as
  Tune reports its trial complete and calls ``on_epoch`` live, in the iterating thread, as each
  epoch's result arrives. When ``on_epoch`` is given, the worker also hands every epoch's
  weights to the mailbox (which keeps a child's latest two), so a child pruned by ``on_epoch``
  returning ``False`` (Tune stops the trial) comes back with the weights of its last finished
  epoch. Without ``on_epoch`` only the final weights travel.
- A child that raises comes back ``"failed"`` from the worker (no retry: it would fail
  again). A worker that dies (killed, out of memory, node lost) is retried by Tune up to
  ``max_failures`` times from the start of the child, which repeats the same run; after that
  the child is ``"failed"`` with Tune's error as reason.
- Data sets also travel through the object store: the driver loads each one once (cached per
  process) and puts it there once per run; a worker fetches it for its first child and caches
  it (actors are reused between the trials of a run). Workers need neither the data files nor
  the loaders' imports (about 2 s per worker saved on ``digits``). Only if the driver cannot
  load a data set does the worker try itself, so its children fail with the loader's error;
  for that attempt a relative or default ``data_root`` is made absolute on the driver.
- Joining a cluster by ``host:port``: Ray 2.60 heads started with ``ray start --head`` use token
  authentication (``RAY_AUTH_MODE=token``) whenever a token exists, but a driver given an
  explicit address does not send one (``ray.init`` then retries for 20 s and raises). The
  executor connects to the head's GCS first: if it demands a token and this machine has one
  (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), token mode is turned
  on for this process as Ray does for a local cluster; without one, or with one the head
  rejects, ConfigError says what to set, within milliseconds.
- Ray Tune's output is silenced (``verbose=0``, the old output engine via
  ``RAY_AIR_NEW_OUTPUT=0``). A local Ray started here chooses token authentication itself, so
  Ray does not warn about its default, and a worker that Ray terminates while Python runs a
  finalizer does not print the ``SystemExit`` it cannot raise (:func:`_quiet_exit`); Ray's
  other warnings and a failed worker's traceback still show.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import safetensors.torch
import torch
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from morphnas.errors import ConfigError
from morphnas.execute.base import (
    ChildJob,
    ChildResult,
    DatasetSpec,
    EpochCallback,
    Executor,
    check_devices,
    check_jobs,
    check_ray_address,
    check_resources,
    threads_for,
)
from morphnas.execute.child import cached_dataset, cpu_weights, run_child_with_model_hook
from morphnas.train.data import DEFAULT_DATA_ROOT

# Ray Tune's own output would bury the morphnas CLI's: the old output engine, which ``verbose=0``
# silences (no progress tables), and no warning about slow experiment-state syncs.
QUIET_ENV: dict[str, str] = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
_POLL_SECONDS = 0.1


class RayExecutor(Executor):
    """Fine-tune children in parallel as Ray Tune trials (see the module docstring for the mechanics).

    - ``ray_address``: join that running cluster (``ray.init(address=...)``; None falls back to
      ``$RAY_ADDRESS``); a ``host:port`` that does not answer within seconds, or whose head
      demands a token this machine lacks, raises ConfigError (token mode is turned on when the
      head demands one and this machine has it).
      With neither, the cluster ``ray start`` left running on this machine is joined if there is
      one, else a local Ray is started with all this machine's CPUs and no dashboard (ConfigError
      for ``gpus_per_child > 0`` without CUDA). If Ray is already initialised in this process,
      that runtime is used as it is.
      :meth:`close` shuts Ray down (or disconnects) only if this executor called ``ray.init``.
    - ``cpus_per_child`` / ``gpus_per_child``: each trial's resources, fractional allowed; a
      child uses ``threads_for(cpus_per_child)`` torch threads, and trains on ``"cuda"`` when
      ``gpus_per_child > 0`` (Ray sets ``CUDA_VISIBLE_DEVICES`` to its share of a GPU).
    - ``max_concurrent``: at most this many children at once (None: as many as fit).
    - ``storage_path``: where Tune keeps its experiment state (never weights; results come back
      through Ray). None: a temporary directory on the driver, removed by :meth:`close` (each
      run's sub-directory as soon as the run ends), fine on any cluster. A given path or URI is
      kept, one ``morphnas-<id>`` sub-directory per :meth:`run`.
    - ``max_failures``: how many times Tune restarts a child whose worker died.
    """

    def __init__(
        self,
        cpus_per_child: float = 1,
        gpus_per_child: float = 0,
        *,
        ray_address: str | None = None,
        max_concurrent: int | None = None,
        storage_path: str | None = None,
        max_failures: int = 1,
    ) -> None:
        check_resources(cpus_per_child, gpus_per_child)
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {max_failures}")
        self.cpus_per_child = cpus_per_child
        self.gpus_per_child = gpus_per_child
        self.threads = threads_for(cpus_per_child)
        self.max_concurrent = max_concurrent
        self.max_failures = max_failures
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        self._closed = False
        self._owns_storage = False
        self._owns_ray = False
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            if address is not None:
                check_ray_address(address)
                _authenticate(address)
                try:
                    ray.init(address=address, logging_level=logging.WARNING)
                except ConnectionError as err:
                    raise ConfigError(f"cannot connect to Ray at {address}: {str(err).splitlines()[0]}") from None
            else:
                check_devices(gpus_per_child)
                _init_local_ray()
            self._owns_ray = True
            if address is None:
                self._check_fits()
        self._owns_storage = storage_path is None
        if storage_path is None:
            storage_path = tempfile.mkdtemp(prefix="morphnas-ray-")
        self.storage_path = storage_path if "://" in storage_path else str(Path(storage_path).absolute())

    def _check_fits(self) -> None:
        """ConfigError when one child asks for more than the local Ray has (Tune would wait forever)."""
        total = ray.cluster_resources()
        for name, need in (("CPU", self.cpus_per_child), ("GPU", self.gpus_per_child)):
            have = total.get(name, 0.0)
            if need > have:
                self.close()
                raise ConfigError(f"each child asks for {need} {name}s but this machine's Ray has {have:g}")

    def close(self) -> None:
        """Remove the temporary storage directory and shut down Ray if we started it; idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._owns_storage:
            shutil.rmtree(self.storage_path, ignore_errors=True)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def _prepare(self, job: ChildJob) -> ChildJob:
        """The job as the worker gets it: absolute data root, device ``cuda`` on a GPU share."""
        root = job.dataset.data_root if job.dataset.data_root is not None else DEFAULT_DATA_ROOT
        dataset = dataclasses.replace(job.dataset, data_root=str(Path(root).absolute()))
        train = dataclasses.replace(job.train, device="cuda") if self.gpus_per_child > 0 else job.train
        return dataclasses.replace(job, dataset=dataset, train=train)

    def run(self, jobs: list[ChildJob], on_epoch: EpochCallback | None = None) -> Iterator[ChildResult]:
        """Run ``jobs`` as one Tune experiment; yield results in completion order.

        ``on_epoch`` is called live from this generator's thread as each epoch's result reaches
        the driver; while it runs, Tune's driver loop waits (workers keep training up to their
        next report). Closing the generator early stops the remaining trials.
        """
        if self._closed:
            raise ConfigError("this RayExecutor is closed")
        check_jobs(jobs)
        if not jobs:
            return
        name = f"morphnas-{uuid.uuid4().hex[:12]}"
        prepared = [self._prepare(job) for job in jobs]
        refs = {job.key: ray.put(job) for job in prepared}
        data = _put_datasets({job.dataset for job in prepared})
        bridge = _Bridge(live=on_epoch is not None)
        _BRIDGES[bridge.id] = bridge
        mailbox = _Mailbox.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        ).remote()
        thread = threading.Thread(
            target=self._fit, args=(refs, data, mailbox, bridge, name), name=f"{name}-tune", daemon=True
        )
        thread.start()
        pending = set(refs)
        try:
            while pending:
                event = bridge.events.get()
                if isinstance(event, _Epoch):
                    keep_going = False
                    try:
                        assert on_epoch is not None
                        keep_going = on_epoch(event.key, event.epoch, event.val_error) is not False
                    finally:
                        event.answer(keep_going)
                elif isinstance(event, _Done):
                    if event.key in pending:
                        pending.discard(event.key)
                        yield _to_result(event, mailbox)
                elif isinstance(event, _Finished):
                    if event.error is not None:
                        raise event.error
                    for key in sorted(pending):
                        reason = "RayError: Ray Tune ended without a result for this child"
                        yield ChildResult(key, "failed", None, [], 0.0, None, reason)
                    pending.clear()
        finally:
            bridge.abandon()
            thread.join()
            del _BRIDGES[bridge.id]
            ray.kill(mailbox)
            if self._owns_storage:
                shutil.rmtree(Path(self.storage_path, name), ignore_errors=True)

    def _fit(
        self,
        refs: dict[int, ray.ObjectRef],
        data: dict[DatasetSpec, ray.ObjectRef],
        mailbox: ray.actor.ActorHandle,
        bridge: _Bridge,
        name: str,
    ) -> None:
        """Tune's driver loop (background thread): run every job, then post :class:`_Finished`."""
        try:
            parameters = {
                "refs": refs, "data": data, "mailbox": mailbox, "threads": self.threads, "every_epoch": bridge.live
            }
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, **parameters),
                {"cpu": self.cpus_per_child, "gpu": self.gpus_per_child},
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"key": tune.grid_search(sorted(refs))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=self.max_concurrent,
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=self.storage_path,
                    failure_config=tune.FailureConfig(max_failures=self.max_failures),
                    stop=bridge.stopper,
                    callbacks=[bridge.callback],
                    verbose=0,
                ),
            )
            tuner.fit()
        except BaseException as err:  # noqa: BLE001 - handed to the iterating thread, which re-raises
            bridge.events.put(_Finished(err))
        else:
            bridge.events.put(_Finished(None))


def _init_local_ray() -> None:
    """Start a local Ray with all this machine's CPUs, or join the one ``ray start`` left running here.

    ``ray.init`` without an address joins a cluster started by ``ray start`` on this machine, and
    then refuses ``num_cpus`` (a ValueError raised before it connects): that cluster keeps its own
    resources.

    A new local Ray gets token authentication, as Ray 2.60 gives one by default; the mode is
    chosen here (``RAY_AUTH_MODE=token``, unless the user set it) because Ray warns on stderr
    about a default it applies. Joining, the cluster's own mode decides, as Ray decides it.
    """
    from ray._private.authentication import authentication_token_setup as auth
    from ray._raylet import Config

    chosen = auth.AUTH_MODE_ENV_VAR in os.environ
    if not chosen:
        auth._enable_token_auth()  # what ray.init does for a new cluster, without the warning
    try:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
    except ValueError as err:
        if "existing cluster" not in str(err):
            raise
        if not chosen:
            del os.environ[auth.AUTH_MODE_ENV_VAR]
            Config.initialize("")  # Ray's config re-reads the environment
        ray.init(logging_level=logging.WARNING)


def _trial_name(trial: Any) -> str:
    return f"child_{trial.config['key']}"


def _put_datasets(specs: set[DatasetSpec]) -> dict[DatasetSpec, ray.ObjectRef]:
    """Load each data set once on the driver (cached) and put it in the object store.

    Workers then need neither the data files nor the loaders' imports. A data set the driver
    cannot load is left out: each worker then tries to load it itself and its children fail
    with the loader's error, as they would in-process.
    """
    refs = {}
    for spec in specs:
        try:
            refs[spec] = ray.put(cached_dataset(spec))
        except Exception:  # noqa: BLE001 - reported per child by the worker's own attempt
            continue
    return refs


# ---- the worker side -------------------------------------------------------------------------


def _trainable(
    config: dict[str, Any],
    *,
    refs: dict[int, ray.ObjectRef],
    data: dict[DatasetSpec, ray.ObjectRef],
    mailbox: ray.actor.ActorHandle,
    threads: int,
    every_epoch: bool,
) -> None:
    """One Tune trial: fetch the job, fine-tune it, report epochs and the outcome; weights go to the mailbox."""
    sys.unraisablehook = _quiet_exit
    key = int(config["key"])
    job: ChildJob = ray.get(refs[key])
    node = ray.get_runtime_context().get_node_id()

    def post(tag: int | str, weights: dict[str, torch.Tensor]) -> None:
        """Hand ``weights`` to the mailbox before the report that names them (waits until they are there)."""
        ray.get(mailbox.put.remote(key, tag, safetensors.torch.save(weights)))

    def report_epoch(epoch: int, val_error: float, model: torch.nn.Module) -> bool:
        if every_epoch:
            post(epoch, cpu_weights(model))
        tune.report({"key": key, "epoch": epoch, "val_error": val_error, "node": node})
        return True  # pruning is decided on the driver: the Stopper ends the trial

    data_ref = data.get(job.dataset)
    load = None if data_ref is None else lambda: ray.get(data_ref)
    result = run_child_with_model_hook(job, report_epoch, threads=threads, load=load)
    if result.weights is not None:
        post(FINAL, result.weights)
    tune.report({
        "key": key,
        "final": True,
        "status": result.status,
        "val_error": result.val_error,
        "val_loss": result.val_loss,
        "history": result.history,
        "seconds": result.seconds,
        "epochs": result.epochs,
        "reason": result.reason,
        "node": node,
    })


def _quiet_exit(unraisable: Any) -> None:
    """A worker's hook for exceptions Python cannot raise (in a finalizer or weakref callback).

    Ray ends a Tune actor whose handle Tune dropped with SIGTERM, and the worker's handler
    turns it into ``SystemExit``; when the signal lands while a finalizer runs (a ``WeakSet``
    callback, say), the exit cannot propagate and Python prints it as "Exception ignored ...
    SystemExit: 1" under a successful run. The worker is ending anyway: that one is dropped,
    every other unraisable exception is printed as before.
    """
    if not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)


FINAL = "final"  # the mailbox tag of a child's final weights (epochs are tagged with their number)


@ray.remote(num_cpus=0)
class _Mailbox:
    """Children's weights (safetensors bytes) on their way from the workers to the driver.

    Keeps the latest two entries per child: a worker may hand over its next epoch's weights
    before Tune stops it, and the driver takes the epoch it last saw.
    """

    def __init__(self) -> None:
        self.boxes: dict[int, dict[int | str, bytes]] = {}

    def put(self, key: int, tag: int | str, payload: bytes) -> None:
        box = self.boxes.setdefault(key, {})
        box[tag] = payload
        while len(box) > 2:
            del box[next(iter(box))]

    def take(self, key: int, tag: int | str) -> bytes | None:
        """The child's weights tagged ``tag`` (None if never handed over); the child's entries are dropped."""
        return self.boxes.pop(key, {}).get(tag)


def _authenticate(address: str) -> None:
    """Send the token a ``host:port`` head demands, as Ray 2.60 does for a local cluster; ConfigError if we cannot.

    Connects a bare GCS client first (milliseconds when the head answers; ConfigError after
    about 14 s when what listens there is not Ray). If the head demands a token and
    ``RAY_AUTH_MODE`` is unset or ``token``, token mode is turned on for this process when Ray
    finds a token here, and the connection is tried again with it.
    """
    from ray._private.authentication import authentication_token_setup as auth
    from ray._raylet import AuthenticationTokenLoader

    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit() or _gcs_accepts(address):
        return
    fix = "copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)"
    mode = os.environ.get(auth.AUTH_MODE_ENV_VAR)
    if mode is not None and mode.lower() != "token":
        raise ConfigError(f"the Ray cluster at {address} demands a token but RAY_AUTH_MODE={mode}: unset it and {fix}")
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise ConfigError(f"the Ray cluster at {address} demands a token and this machine has none: {fix}")
    auth._enable_token_auth()
    if not _gcs_accepts(address):
        raise ConfigError(f"the Ray cluster at {address} rejects this machine's token: {fix}")


def _gcs_accepts(address: str) -> bool:
    """False if the GCS at ``address`` refuses this process's credentials; ConfigError if it does not answer."""
    from ray._raylet import InnerGcsClient

    try:
        InnerGcsClient.standalone(address, None, 4000)
    except ray.exceptions.AuthenticationError:
        return False
    except Exception as err:  # noqa: BLE001 - Ray raises its RpcError for a port that is not a GCS
        raise ConfigError(f"no Ray cluster answers at {address}: {str(err).splitlines()[0]}") from None
    return True


# ---- the driver side: from Tune's thread to the iterating thread -------------------------------


@dataclasses.dataclass
class _Epoch:
    """An epoch result waiting for ``on_epoch``'s verdict (the Stopper blocks until answered)."""

    key: int
    epoch: int
    val_error: float
    keep_going: bool = True
    answered: threading.Event = dataclasses.field(default_factory=threading.Event)

    def answer(self, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.answered.set()


@dataclasses.dataclass
class _Done:
    """A trial that ended: its last metrics, its epoch history, and how it ended."""

    key: int
    status: str  # "final" (the worker reported its outcome), "pruned", or "error"
    metrics: dict[str, Any]
    history: list[float]
    reason: str | None = None


@dataclasses.dataclass
class _Finished:
    """``Tuner.fit`` returned (``error`` None) or raised ``error``."""

    error: BaseException | None


class _Bridge:
    """State shared by Tune's thread (Stopper, Callback) and :meth:`RayExecutor.run`'s thread."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.events: queue.Queue[_Epoch | _Done | _Finished] = queue.Queue()
        self.history: dict[int, list[float]] = {}
        self.pruned: set[int] = set()
        self.abandoned = threading.Event()
        self.id = uuid.uuid4().hex
        self.stopper = _Stopper(self.id)
        self.callback = _Callback(self.id)

    def abandon(self) -> None:
        """The iterating thread is gone: answer nothing more, stop every trial."""
        self.abandoned.set()

    def on_result(self, result: dict[str, Any]) -> bool:
        """Stopper hook: record an epoch, ask ``on_epoch`` when live; True stops the trial."""
        if self.abandoned.is_set():
            return True
        if "epoch" not in result or "key" not in result:
            return False
        key, epoch = int(result["key"]), int(result["epoch"])
        history = self.history.setdefault(key, [])
        if epoch <= len(history):  # a restarted worker repeats epochs it already reported
            return False
        history.append(float(result["val_error"]))
        if not self.live:
            return False
        event = _Epoch(key, epoch, float(result["val_error"]))
        self.events.put(event)
        while not event.answered.wait(_POLL_SECONDS):
            if self.abandoned.is_set():
                return True
        if not event.keep_going:
            self.pruned.add(key)
            return True
        return False

    def on_complete(self, trial: Any) -> None:
        key = int(trial.config["key"])
        metrics = dict(trial.last_result or {})
        status = "final" if metrics.get("final") else "pruned" if key in self.pruned else "error"
        reason = None if status != "error" else "RayError: Ray Tune stopped the child before it finished"
        self.events.put(_Done(key, status, metrics, list(self.history.get(key, [])), reason))

    def on_error(self, trial: Any) -> None:
        key = int(trial.config["key"])
        self.events.put(
            _Done(key, "error", dict(trial.last_result or {}), list(self.history.get(key, [])), _error_of(trial))
        )


_BRIDGES: dict[str, _Bridge] = {}  # Tune pickles its run config: stopper and callback hold only an id


class _Stopper(tune.Stopper):
    def __init__(self, bridge_id: str) -> None:
        self.bridge_id = bridge_id

    @property
    def bridge(self) -> _Bridge:
        return _BRIDGES[self.bridge_id]

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.bridge.on_result(result)

    def stop_all(self) -> bool:
        return self.bridge.abandoned.is_set()


class _Callback(tune.Callback):
    def __init__(self, bridge_id: str) -> None:
        self.bridge_id = bridge_id

    @property
    def bridge(self) -> _Bridge:
        return _BRIDGES[self.bridge_id]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.bridge.on_complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.bridge.on_error(trial)


def _error_of(trial: Any) -> str:
    """A one-line reason from Tune's error record of a trial whose worker failed for good.

    The record (``str`` of the last exception, after a ``Failure # n`` line) is read from the
    driver's copy of the trial directory, written before ``on_trial_error`` runs, else from
    storage. Its first line, a ``SomeError: message`` line if any, and Ray's "Worker exit
    detail" make the reason.
    """
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the reason is best effort
        pass
    last = re.split(r"^Failure # .*$", str(text), flags=re.MULTILINE)[-1]
    lines = [line.strip() for line in last.splitlines() if line.strip()]
    typed = [m for m in map(_ERROR_LINE.match, lines) if m]
    detail = f"{typed[-1].group(1)}: {typed[-1].group(2)}" if typed else (lines[0] if lines else "the worker failed")
    exit_detail = re.search(r"Worker exit detail: (.*?\.)(?: Some common causes|$)", last, flags=re.DOTALL)
    if exit_detail and exit_detail.group(1) not in detail:
        detail += f" (worker exit detail: {exit_detail.group(1).strip()})"
    return f"RayError: worker failed {trial.num_failures} time(s); last: {detail}"


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception))(?::\s*(.*))?$")


def _to_result(done: _Done, mailbox: ray.actor.ActorHandle) -> ChildResult:
    """Turn a finished trial into a :class:`ChildResult`, taking its weights from the mailbox."""
    metrics = done.metrics
    if done.status == "error":
        seconds = float(metrics.get("time_total_s", 0.0))
        return ChildResult(done.key, "failed", None, done.history, seconds, None, done.reason)
    if done.status == "final":
        status, history, tag = str(metrics["status"]), [float(v) for v in metrics.get("history", [])], FINAL
        val_error, seconds, reason = metrics.get("val_error"), float(metrics.get("seconds", 0.0)), metrics.get("reason")
    else:
        status, history, tag = "pruned", done.history, len(done.history)
        val_error, seconds, reason = (history[-1] if history else None), float(metrics.get("time_total_s", 0.0)), None
    if status == "failed":
        return ChildResult(done.key, status, None, history, seconds, None, reason)
    try:
        payload = ray.get(mailbox.take.remote(done.key, tag))
    except ray.exceptions.RayError as err:  # the mailbox is gone (its node died): this child only fails
        return ChildResult(done.key, "failed", None, history, seconds, None, f"RayError: {str(err).splitlines()[0]}")
    if payload is None:
        which = "final" if tag == FINAL else f"epoch {tag}"
        reason = f"RayError: the child's weights ({which}) never reached the driver"
        return ChildResult(done.key, "failed", None, history, seconds, None, reason)
    val_loss = metrics.get("val_loss") if done.status == "final" else None
    return ChildResult(
        done.key, status, None if val_error is None else float(val_error), history, seconds,
        safetensors.torch.load(payload), val_loss=None if val_loss is None else float(val_loss),
        node=metrics.get("node"), epochs=metrics.get("epochs") if done.status == "final" else None,
    )
