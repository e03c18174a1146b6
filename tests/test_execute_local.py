"""The in-process executor and the child runner both executors share."""

import dataclasses
import threading

import pytest
import torch

from morphnas.cli.search import make_executor
from morphnas.errors import ConfigError
from morphnas.execute import (
    ChildJob,
    ChildResult,
    DatasetSpec,
    Executor,
    LocalExecutor,
    child_seed,
    run_child,
    threads_for,
)
from morphnas.execute.child import cached_dataset
from morphnas.ir import cnn, init_weights, mlp
from morphnas.train import TrainConfig

DIGITS = DatasetSpec("digits")


def make_job(key: int, *, net: str = "cnn", epochs: float = 1, lr: float = 0.05, seed: int = 7) -> ChildJob:
    graph = cnn((1, 8, 8), 10) if net == "cnn" else mlp((1, 8, 8), 10, hidden=32)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=64, warmup_epochs=0, seed=seed)
    return ChildJob(key, graph.to_json(), init_weights(graph, seed=1), config, DIGITS)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ok_child_reports_history_and_trained_cpu_weights():
    job = make_job(1, epochs=2)
    before = {k: v.clone() for k, v in job.weights.items()}
    with LocalExecutor() as executor:
        (result,) = list(executor.run([job]))
    assert result.key == 1 and result.status == "ok" and result.reason is None
    assert len(result.history) == 2 and all(0 <= e <= 1 for e in result.history)
    assert result.val_error == result.history[-1] < 0.5
    assert result.seconds > 0
    assert result.weights is not None and result.weights.keys() == job.weights.keys()
    for tensor in result.weights.values():
        assert tensor.device.type == "cpu" and tensor.is_contiguous() and not tensor.requires_grad
    assert not same_weights(result.weights, job.weights), "training changed nothing"
    assert same_weights(job.weights, before), "the job's weights were modified in place"


def test_same_job_same_result_and_each_trial_has_its_own_seed():
    first = run_child(make_job(3, net="mlp"), threads=1)
    again = run_child(make_job(3, net="mlp"), threads=1)
    other = run_child(make_job(4, net="mlp"), threads=1)
    assert first.history == again.history and same_weights(first.weights, again.weights)
    assert not same_weights(first.weights, other.weights)


def test_child_seed_mixes_search_seed_and_trial_number():
    assert child_seed(0, 5) == child_seed(0, 5)
    seeds = {child_seed(s, k) for s in range(3) for k in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)
    with pytest.raises(ConfigError):
        child_seed(-1, 0)


def test_threads_pinned_per_child_and_restored():
    seen: list[int] = []
    outside = torch.get_num_threads()
    target = 1 if outside != 1 else 2

    def on_epoch(key: int, epoch: int, val_error: float) -> bool:
        seen.append(torch.get_num_threads())
        return True

    results = list(LocalExecutor(cpus_per_child=target).run([make_job(1, net="mlp"), make_job(2, net="mlp")], on_epoch))
    assert [r.status for r in results] == ["ok", "ok"]
    assert seen == [target, target]
    assert torch.get_num_threads() == outside


def test_threads_for_cpu_shares():
    assert [threads_for(c) for c in (0.25, 1, 1.5, 2, 4)] == [1, 1, 1, 2, 4]


def test_diverging_child_fails_with_reason_and_others_finish():
    jobs = [make_job(1, net="mlp"), make_job(2, net="mlp", lr=1e8), make_job(3, net="mlp")]
    results = {r.key: r for r in LocalExecutor().run(jobs)}
    assert [results[k].status for k in (1, 2, 3)] == ["ok", "failed", "ok"]
    failed = results[2]
    assert failed.weights is None and failed.val_error is None
    assert failed.reason.startswith("TrainingDivergedError: ") and "diverged" in failed.reason


def test_on_epoch_false_prunes_with_weights_so_far():
    calls: list[tuple[int, int, float]] = []
    caller = threading.get_ident()

    def on_epoch(key: int, epoch: int, val_error: float) -> bool:
        assert threading.get_ident() == caller
        calls.append((key, epoch, val_error))
        return not (key == 2 and epoch == 1)

    jobs = [make_job(1, net="mlp", epochs=2), make_job(2, net="mlp", epochs=3)]
    results = {r.key: r for r in LocalExecutor().run(jobs, on_epoch)}
    assert results[1].status == "ok" and len(results[1].history) == 2
    pruned = results[2]
    assert pruned.status == "pruned" and pruned.reason is None
    assert len(pruned.history) == 1 and pruned.val_error == pruned.history[0]
    assert pruned.weights is not None and not same_weights(pruned.weights, jobs[1].weights)
    assert [(k, e) for k, e, _ in calls] == [(1, 1), (1, 2), (2, 1)]
    assert [v for _, _, v in calls] == results[1].history + pruned.history


def test_on_epoch_exception_propagates_to_the_caller():
    def on_epoch(key: int, epoch: int, val_error: float) -> bool:
        raise KeyError("the caller's own bug")

    with pytest.raises(KeyError, match="the caller's own bug"):
        list(LocalExecutor().run([make_job(1, net="mlp")], on_epoch))


def test_bad_weights_and_bad_data_fail_the_child_only():
    bad_weights = make_job(1, net="mlp")
    bad_weights.weights = {k: v for k, v in bad_weights.weights.items() if not k.endswith("bias")}
    bad_data = dataclasses.replace(make_job(2, net="mlp"), dataset=DatasetSpec("no-such-data"))
    results = {r.key: r for r in LocalExecutor().run([bad_weights, bad_data, make_job(3, net="mlp")])}
    assert results[1].status == "failed" and results[1].reason.startswith("GraphError: ")
    assert results[2].status == "failed" and results[2].reason.startswith("DataError: ")
    assert results[3].status == "ok"


def test_results_stream_one_by_one():
    results = LocalExecutor().run([make_job(1, net="mlp"), make_job(2, net="mlp")])
    first = next(results)
    assert isinstance(first, ChildResult) and first.key == 1
    assert [r.key for r in results] == [2]


def test_duplicate_keys_and_empty_batches():
    with pytest.raises(ConfigError, match="unique"):
        list(LocalExecutor().run([make_job(1, net="mlp"), make_job(1, net="mlp")]))
    assert list(LocalExecutor().run([])) == []


def test_datasets_are_cached_per_process():
    assert cached_dataset(DIGITS) is cached_dataset(DatasetSpec("digits"))
    assert cached_dataset(DatasetSpec("digits", split_seed=1)) is not cached_dataset(DIGITS)


def test_make_executor_validates():
    executor = make_executor("local", cpus_per_child=2)
    assert isinstance(executor, LocalExecutor) and isinstance(executor, Executor)
    assert executor.cpus_per_child == 2 and executor.threads == 2
    with pytest.raises(ConfigError, match="unknown executor 'slurm'"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="cpus_per_child"):
        make_executor("local", cpus_per_child=0)
    with pytest.raises(ConfigError, match="gpus_per_child"):
        make_executor("local", gpus_per_child=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_share_without_cuda_is_refused_before_any_child():
    with pytest.raises(ConfigError, match="no CUDA device"):
        LocalExecutor(gpus_per_child=1)
    with pytest.raises(ConfigError, match="gpus_per_child is 0.25"):
        make_executor("local", gpus_per_child=0.25)
