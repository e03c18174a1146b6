"""A real two-node Ray 2.60 cluster on this machine, joined by address with token authentication.

The head is ``ray start --head`` with default settings: a token exists under its ``HOME``, so
Ray turns token authentication on. The second node joins with ``RAY_AUTH_MODE=token`` and, when
run as root with ``unshare``, in its own mount namespace with empty tmpfs over the head's
temporary directory and pytest's (where the drivers keep their files): it cannot see the
driver's temporary files nor the head's session directory, so its children must get their
jobs and return their weights through Ray alone. Only those folders are hidden, so a checkout
or venv that lives under ``/tmp`` stays importable there. The fixture waits until both nodes
are alive. Each node has one CPU, so two children at once put one on each node.

The driver runs in a subprocess with that ``HOME`` and no ``RAY_AUTH_MODE``: the executor must
find out by itself that the head wants a token. Every process the fixture starts runs in its
own process group, which is what gets stopped (never ``ray stop``, which stops every Ray on the
machine).
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest

pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RAY = Path(sys.executable).with_name("ray")
ROOT = Path(__file__).resolve().parents[1]
PRIVATE_TMP = os.geteuid() == 0 and shutil.which("unshare") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what outlives it (the GCS and raylet may)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, head's temporary dir, HOME with the token, the driver's clean environment)."""
    tmp = Path(tempfile.mkdtemp(prefix="mnc", dir="/tmp"))  # short: Ray's socket paths live under it
    home = tmp / "home"
    token = os.urandom(32).hex()  # what `ray get-auth-token --generate` writes
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    port = free_port()
    head_args = [f"--port={port}",
                 f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false"]
    worker_args = [f"--address=127.0.0.1:{port}", f"--dashboard-agent-listen-port={free_port()}"]
    worker_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    started: list[subprocess.Popen] = []

    def start(command: list[str], environment: dict, log: str) -> None:
        with (tmp / log).open("w") as out:
            started.append(subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True))

    try:
        start([str(RAY), "start", "--head", *head_args, "--num-cpus=1", "--block"], env, "head.log")
        wait_for(lambda: (tmp / "ray" / "ray_current_cluster").exists(), started, tmp / "head.log")
        worker = [str(RAY), "start", *worker_args, "--num-cpus=1", "--block"]
        if PRIVATE_TMP:  # nothing of the head's or the drivers' is visible there; the checkout and venv are
            hidden = [str(tmp), str(tmp_path_factory.getbasetemp())]
            worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(d)}" for d in hidden) + ' && exec "$@"',
                      "sh", *worker]
        start(worker, worker_env, "worker.log")
        wait_for_nodes(f"127.0.0.1:{port}", worker_env, started, tmp / "worker.log")
        yield f"127.0.0.1:{port}", tmp, home, env
    finally:
        for process in reversed(started):
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for(condition, processes: list[subprocess.Popen], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


NODES = textwrap.dedent("""
    import sys, time
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR")
    deadline = time.monotonic() + float(sys.argv[2])
    while sum(node["Alive"] for node in ray.nodes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    sys.exit(sum(node["Alive"] for node in ray.nodes()) < 2)
""")


def wait_for_nodes(address: str, env: dict, processes: list[subprocess.Popen], log: Path, seconds: float = 60) -> None:
    """Wait until the head and the second node are alive; fail with the second node's log if it does not join."""
    joined = subprocess.run([sys.executable, "-c", NODES, address, str(seconds)], env=env, capture_output=True,
                            text=True, timeout=seconds + 30)
    if joined.returncode != 0 or not all(p.poll() is None for p in processes):
        pytest.fail(f"the second Ray node did not join the head within {seconds:.0f} s; its log ends:\n"
                    f"{log.read_text()[-3000:]}\n{joined.stderr[-1000:]}")


DRIVER = textwrap.dedent("""
    import hashlib, json, sys, time
    import ray
    from ray._private.state import available_resources_per_node
    from morphnas.execute import ChildJob, DatasetSpec, LocalExecutor
    from morphnas.execute.ray_executor import RayExecutor
    from morphnas.ir import cnn, init_weights, mlp
    from morphnas.train import TrainConfig

    def job(key, graph, epochs):
        config = TrainConfig(epochs=epochs, lr=0.05, batch_size=64, warmup_epochs=0, seed=11)
        return ChildJob(key, graph.to_json(), init_weights(graph, seed=2), config, DatasetSpec("digits"))

    def digest(weights):
        h = hashlib.sha256()
        for name in sorted(weights):
            h.update(name.encode() + weights[name].numpy().tobytes())
        return h.hexdigest()

    def summary(results):
        return {r.key: [r.status, r.val_error, r.history, digest(r.weights) if r.weights else None] for r in results}

    jobs = [job(1, cnn((1, 8, 8), 10), 2), job(2, mlp((1, 8, 8), 10, hidden=32), 2)]
    started = time.monotonic()
    with RayExecutor(cpus_per_child=1, ray_address=sys.argv[1], max_failures=0) as executor:  # no retry elsewhere
        joined = time.monotonic() - started
        deadline = time.monotonic() + 60
        while sum(node["Alive"] for node in ray.nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        head = ray.get_runtime_context().get_node_id()
        busy = set()

        def on_epoch(key, epoch, val_error):  # the reporting child still holds its node's CPU here
            busy.update(node for node, free in available_resources_per_node().items() if free.get("CPU", 0) < 1)
            return True

        ray_results = summary(executor.run(jobs, on_epoch))
        nodes = sum(node["Alive"] for node in ray.nodes())
        storage = executor.storage_path
    local = summary(LocalExecutor(cpus_per_child=1).run(jobs))
    print(json.dumps({"ray": ray_results, "local": local, "joined_seconds": joined, "nodes": nodes,
                      "children_off_head": len(busy - {head}), "storage": storage}))
""")


def test_children_run_on_both_nodes_and_come_back_through_ray(cluster, tmp_path: Path) -> None:
    address, head_tmp, home, env = cluster
    driver_tmp = tmp_path / "driver-tmp"
    driver_tmp.mkdir()
    started = time.monotonic()
    driver = subprocess.run([sys.executable, "-c", DRIVER, address], env={**env, "TMPDIR": str(driver_tmp)},
                            capture_output=True, text=True, timeout=150)
    assert driver.returncode == 0, driver.stderr[-3000:]
    out = json.loads(driver.stdout.strip().splitlines()[-1])
    print(f"driver: {time.monotonic() - started:.1f} s, joined in {out['joined_seconds']:.2f} s")
    assert out["nodes"] == 2 and out["joined_seconds"] < 15
    assert out["children_off_head"] == 1, "no child ran on the second node"
    assert out["ray"] == out["local"]  # same val errors, histories and weights as in-process
    assert {status for status, *_ in out["ray"].values()} == {"ok"}
    assert all(len(history) == 2 and 0 < val_error < 1 for _, val_error, history, _ in out["ray"].values())
    # no weights anywhere on the head's or the driver's disk: Tune's temporary storage is gone too
    assert not Path(out["storage"]).exists()
    leftovers = [p for root in (head_tmp, driver_tmp, home) for p in root.rglob("*")
                 if p.suffix == ".safetensors" or p.name.startswith("checkpoint_")]
    assert not leftovers and not (home / "ray_results").exists()


def test_a_head_that_wants_a_token_this_machine_lacks_is_refused_at_once(cluster, tmp_path: Path) -> None:
    address, _, _, env = cluster
    script = "import sys; from morphnas.execute.ray_executor import RayExecutor; RayExecutor(ray_address=sys.argv[1])"
    for extra, message in (
        ({"HOME": str(tmp_path)}, "demands a token and this machine has none"),
        ({"RAY_AUTH_TOKEN": "0" * 64}, "rejects this machine's token"),
        ({"RAY_AUTH_MODE": "disabled"}, "demands a token but RAY_AUTH_MODE=disabled"),
    ):
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-c", script, address], env={**env, **extra}, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode != 0 and time.monotonic() - started < 15
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("morphnas.errors.ConfigError: the Ray cluster at ") and message in last, last
        assert "RAY_AUTH_TOKEN" in last


SPACE = {
    "name": "cluster", "dataset": {"name": "digits"},
    "seed": {"arch": "cnn", "epochs": 1, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5]}}, "deepen": {}},
    "finetune": {"epochs": 1, "batch_size": 64}, "final": {"epochs": 1, "batch_size": 64},
    "budget": {"generations": 2, "children": 2},
}


def test_a_two_generation_search_through_ray_address_uses_both_nodes(cluster, tmp_path: Path) -> None:
    address, _, _, env = cluster
    (tmp_path / "space.yaml").write_text(json.dumps(SPACE))  # JSON is YAML
    run = subprocess.run(
        [sys.executable, "-c", "from morphnas.cli import app; app()", "search", "--space", str(tmp_path / "space.yaml"),
         "--ray-address", address, "--workdir", str(tmp_path / "w"), "--study", "c", "--json"],
        env={**env, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["n_trials"] == 1 + 2 * 2 + 1 and summary["n_failed"] == 0
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 'w' / 'morphnas.db'}")
    trials = study.get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    children = [t for t in trials if t.user_attrs["generation"] in (1, 2) and t.user_attrs["rule"] != "final"]
    assert [t.user_attrs["generation"] for t in children] == [1, 1, 2, 2]
    assert len({t.user_attrs["node"] for t in trials}) == 2, "no child trained on the second node"
