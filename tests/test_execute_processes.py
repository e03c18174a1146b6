"""Children side by side in worker processes: the same results as in-process, live pruning,
errors from the callback, and a worker that dies."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_execute_local import make_job, same_weights

from morphnas.cli.search import make_executor
from morphnas.errors import ConfigError
from morphnas.execute import LocalExecutor, ProcessExecutor


@pytest.fixture(scope="module")
def executor():
    with ProcessExecutor(workers=2) as runner:
        yield runner


def test_side_by_side_children_match_in_process_ones_with_the_same_threads(executor):
    jobs = [make_job(key, net="mlp", epochs=2) for key in (1, 2, 3)]  # 3 jobs on 2 workers: 1 thread each
    results = {r.key: r for r in executor.run(jobs)}
    with LocalExecutor(cpus_per_child=1) as local:
        expected = {r.key: r for r in local.run(jobs)}
    assert sorted(results) == [1, 2, 3]
    for key, result in results.items():
        assert result.status == "ok" and result.history == expected[key].history
        assert result.val_loss == expected[key].val_loss and same_weights(result.weights, expected[key].weights)


def test_on_epoch_runs_in_the_driver_and_prunes_after_the_same_epoch(executor):
    seen = []

    def on_epoch(key, epoch, val_error):
        seen.append((os.getpid(), key, epoch))
        return key != 2  # child 2 stops after its first epoch

    results = {r.key: r for r in executor.run([make_job(k, epochs=3) for k in (1, 2)], on_epoch=on_epoch)}
    assert {pid for pid, _, _ in seen} == {os.getpid()}
    assert sorted((key, epoch) for _, key, epoch in seen) == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert results[2].status == "pruned" and len(results[2].history) == 1 and results[2].weights is not None
    assert results[1].status == "ok" and len(results[1].history) == 3


def test_an_error_in_on_epoch_propagates_and_the_workers_stop():
    def on_epoch(key, epoch, val_error):
        raise RuntimeError("the caller's own fault")

    with ProcessExecutor(workers=2) as runner:
        with pytest.raises(RuntimeError, match="the caller's own fault"):
            list(runner.run([make_job(k, epochs=50) for k in (1, 2)], on_epoch=on_epoch))
        assert runner._pool is None  # closed: both children stopped after their first epoch
        (again,) = list(runner.run([make_job(3, net="mlp")]))  # and the executor still works
        assert again.status == "ok"


def test_a_worker_that_dies_fails_its_children_with_the_reason():
    def on_epoch(key, epoch, val_error):
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
        return True

    with ProcessExecutor(workers=2) as runner:
        results = list(runner.run([make_job(k, epochs=3) for k in (1, 2)], on_epoch=on_epoch))
        assert {r.status for r in results} == {"failed"} and sorted(r.key for r in results) == [1, 2]
        assert all("worker process died" in r.reason for r in results)
        (again,) = list(runner.run([make_job(3, net="mlp")]))  # new workers for the next run
        assert again.status == "ok"


def test_processes_by_name_and_bad_workers():
    with make_executor("processes", cpus_per_child=1) as runner:
        assert isinstance(runner, ProcessExecutor) and runner.workers == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        ProcessExecutor(workers=0)


DRIVER = """
import multiprocessing, sys, threading, time
from test_execute_local import make_job
from morphnas.execute import ProcessExecutor

if __name__ == "__main__":
    executor = ProcessExecutor(workers=2)
    run = lambda: list(executor.run([make_job(1, net="mlp"), make_job(2, net="mlp")]))
    if sys.argv[1] == "starting":  # killed while the workers still import torch
        threading.Thread(target=run, daemon=True).start()
        while len(multiprocessing.active_children()) < 2:
            time.sleep(0.01)
    else:
        run()
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("when", ["starting", "idle"])
def test_workers_end_when_their_driver_is_killed(tmp_path, when):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    tests = str(Path(__file__).parent)
    driver = subprocess.Popen([sys.executable, str(script), when], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, *sys.path])})
    pids = [int(p) for p in driver.stdout.readline().split()]
    assert len(pids) >= 2, "the workers did not start"
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)], "workers outlived their killed driver"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; only its parent has not reaped it
        return stat.read().split(") ")[-1][0] != "Z"
