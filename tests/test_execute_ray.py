"""The Ray Tune executor on a real local Ray (2 CPUs), against the in-process executor.

One live run (with ``on_epoch``) covers agreement with the in-process executor, a diverging
child and a pruned child; one run without ``on_epoch`` covers the final-weights-only path.
"""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from morphnas.cli.search import make_executor  # noqa: E402
from morphnas.errors import ConfigError  # noqa: E402
from morphnas.execute import ChildJob, DatasetSpec, LocalExecutor  # noqa: E402
from morphnas.execute.ray_executor import RayExecutor  # noqa: E402
from morphnas.ir import cnn, init_weights, mlp  # noqa: E402
from morphnas.train import TrainConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def make_job(key: int, *, net: str = "cnn", epochs: float = 1, lr: float = 0.05) -> ChildJob:
    graph = cnn((1, 8, 8), 10) if net == "cnn" else mlp((1, 8, 8), 10, hidden=32)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=64, warmup_epochs=0, seed=11)
    return ChildJob(key, graph.to_json(), init_weights(graph, seed=2), config, DatasetSpec("digits"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def prune_key_3_after_epoch_1(calls: list):
    def on_epoch(key: int, epoch: int, val_error: float) -> bool:
        calls.append((key, epoch, val_error, threading.get_ident()))
        return not (key == 3 and epoch == 1)

    return on_epoch


JOBS = [make_job(1), make_job(2, net="mlp"), make_job(3, epochs=3), make_job(4, net="mlp", lr=1e8)]


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-storage")


@pytest.fixture(scope="module")
def executor(local_ray, storage):
    with RayExecutor(cpus_per_child=1, storage_path=str(storage)) as executor:
        yield executor


@pytest.fixture(scope="module")
def live_run(executor):
    calls: list = []
    results = {r.key: r for r in executor.run(JOBS, prune_key_3_after_epoch_1(calls))}
    return results, calls


@pytest.fixture(scope="module")
def local_run():
    calls: list = []
    return {r.key: r for r in LocalExecutor(cpus_per_child=1).run(JOBS, prune_key_3_after_epoch_1(calls))}


def test_ray_and_in_process_give_identical_children(live_run, local_run):
    results, _ = live_run
    for key in (1, 2):
        ray_result, local_result = results[key], local_run[key]
        assert ray_result.status == local_result.status == "ok"
        assert ray_result.val_error == local_result.val_error
        assert ray_result.history == local_result.history
        assert same_weights(ray_result.weights, local_result.weights)
        assert all(t.device.type == "cpu" and t.is_contiguous() for t in ray_result.weights.values())


def test_diverging_child_fails_with_its_reason(live_run):
    results, _ = live_run
    failed = results[4]
    assert failed.status == "failed" and failed.weights is None and failed.val_error is None
    assert failed.reason.startswith("TrainingDivergedError: ") and "diverged" in failed.reason
    assert {results[k].status for k in (1, 2)} == {"ok"}


def test_on_epoch_prunes_live_and_the_last_epoch_weights_come_back(live_run, local_run):
    results, calls = live_run
    pruned = results[3]
    assert pruned.status == "pruned" and pruned.reason is None
    assert pruned.history == local_run[3].history and len(pruned.history) == 1
    assert pruned.val_error == pruned.history[0]
    assert same_weights(pruned.weights, local_run[3].weights)
    assert not any(key == 3 and epoch > 1 for key, epoch, _, _ in calls), "pruned child kept reporting"


def test_on_epoch_runs_in_the_iterating_thread_once_per_epoch(live_run):
    results, calls = live_run
    assert {thread for *_, thread in calls} == {threading.get_ident()}
    assert sorted((key, epoch) for key, epoch, _, _ in calls) == [(1, 1), (2, 1), (3, 1)]
    for key, epoch, val_error, _ in calls:
        assert results[key].history[epoch - 1] == val_error


def test_weights_come_back_through_ray_and_tune_keeps_no_copy(live_run, storage):
    """Tune's experiment state under a given storage path holds results, never weights or checkpoints."""
    assert any(storage.rglob("result.json")), "Tune kept no experiment state under storage_path"
    assert not [p for p in storage.rglob("*") if p.name.startswith("checkpoint_") or p.suffix == ".safetensors"]
    sizes = [p.stat().st_size for p in storage.rglob("*") if p.is_file()]
    assert max(sizes) < 100_000, "a file under storage_path is large enough to hold weights"


def test_without_on_epoch_only_final_weights_travel(executor, local_run):
    (result,) = executor.run([make_job(1)])
    assert result.status == "ok"
    assert result.history == local_run[1].history and same_weights(result.weights, local_run[1].weights)


def test_gpu_share_trains_on_cuda_and_data_root_becomes_absolute(local_ray):
    executor = RayExecutor(gpus_per_child=0.25)
    try:
        job = executor._prepare(make_job(1))
        assert job.train.device == "cuda"
        assert os.path.isabs(job.dataset.data_root)
    finally:
        executor.close()
    assert ray.is_initialized(), "close() shut down a Ray it did not start"
    assert not os.path.exists(executor.storage_path), "the temporary storage was left behind"


def test_make_executor_ray_validates(local_ray):
    with pytest.raises(ConfigError, match="max_concurrent"):
        make_executor("ray", max_concurrent=0)
    with make_executor("ray", cpus_per_child=0.5, max_concurrent=2) as executor:
        assert isinstance(executor, RayExecutor) and executor.threads == 1
        assert list(executor.run([])) == []


QUIET_RUN = textwrap.dedent("""
    from morphnas.execute.ray_executor import RayExecutor
    from test_execute_ray import make_job, prune_key_3_after_epoch_1

    with RayExecutor(cpus_per_child=1) as executor:
        statuses = sorted(r.status for r in executor.run([make_job(1), make_job(3, epochs=3)],
                                                         prune_key_3_after_epoch_1([])))
    print(statuses)
""")


def test_a_successful_run_on_a_local_ray_it_starts_prints_nothing_on_stderr():
    """No notice about Ray's default token authentication, no worker's traceback at shutdown."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", QUIET_RUN], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip() == "['ok', 'pruned']", run.stderr[-3000:]
    assert run.stderr == ""


UNRAISABLE = textwrap.dedent("""
    import sys
    from morphnas.execute.ray_executor import _quiet_exit

    class Dies:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    sys.unraisablehook = _quiet_exit
    Dies(SystemExit(1))  # as Ray's SIGTERM handler raises it inside a finalizer
    Dies(ValueError("a real error in a finalizer"))
""")


def test_a_worker_drops_only_the_exit_a_finalizer_could_not_raise():
    run = subprocess.run([sys.executable, "-c", UNRAISABLE], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "SystemExit" not in run.stderr
    assert "Exception ignored" in run.stderr and "ValueError: a real error in a finalizer" in run.stderr
