"""Bad inputs that used to give tracebacks or lose work: each is one ``morphnas: error:`` line, exit 2.

The tests run as root, for whom ``chmod 0o500`` does not stop writes: an unwritable target is a
path under a regular file (``file.txt/out``) or under ``/proc``, which nobody can write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from typer.testing import CliRunner

import morphnas.cli.morphnet
import morphnas.cli.studies
import morphnas.cli.train
import morphnas.export.onnx
from morphnas.cli import app
from morphnas.cli.search import make_executor
from morphnas.errors import ConfigError
from morphnas.execute import LocalExecutor
from morphnas.execute.base import check_devices, check_ray_address
from morphnas.ir import init_weights, mlp
from morphnas.search.study import default_storage
from morphnas.train import save_checkpoint

runner = CliRunner()
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
SPACE = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "seed": {"arch": "mlp", "epochs": 0.5, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5]}}},
    "finetune": {"epochs": {"low": 0.5, "high": 0.5}, "batch_size": 64},
    "budget": {"generations": 1, "children": 1},
}


def assert_one_line_error(result, *texts: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphnas: error: "), result.output
    for text in texts:
        assert text in lines[0], result.output
    return lines[0]


def unwritable_targets(tmp_path: Path) -> list[tuple[Path, str]]:
    """Output paths nobody can write, even root, and what the error names for each."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("kept")
    return [(blocker / "out", f"{blocker} is a file, not a directory"), (Path("/proc/morphnas-out"), "/proc")]


def no_loading(*args, **kwargs):
    raise AssertionError("the data set was loaded before --out was checked")


# ---- train / morphnet --out ----------------------------------------------------------------------


def test_train_checks_out_before_loading_or_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["morphnas.train"], "load_dataset", no_loading)  # imported when it runs
    for out, named in unwritable_targets(tmp_path):
        result = runner.invoke(app, ["train", "--arch", "mlp", "--dataset", "digits", "--out", str(out)])
        assert_one_line_error(result, f"cannot write --out {out}", named)
    result = runner.invoke(app, ["train", "--arch", "mlp", "--dataset", "digits", "--out", str(tmp_path / "file.txt")])
    assert_one_line_error(result, f"refusing to overwrite --out {tmp_path / 'file.txt'}: it exists and is not a")
    assert (tmp_path / "file.txt").read_text() == "kept"


def test_morphnet_checks_out_before_loading_or_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["morphnas.train"], "load_dataset", no_loading)
    for out, named in unwritable_targets(tmp_path):
        args = ["morphnet", "--arch", "mlp", "--dataset", "digits", "--budget", "0.5x", "--out", str(out)]
        assert_one_line_error(runner.invoke(app, args), f"cannot write --out {out}", named)
    assert (tmp_path / "file.txt").read_text() == "kept"


def test_train_out_under_new_directories_still_trains(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "run"
    args = ["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "0.2", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["out"] == str(out.absolute())
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"], "the write check left something behind"


# ---- export next to a directory ----------------------------------------------------------------


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    graph = mlp((1, 8, 8), 10, hidden=8)
    return save_checkpoint(tmp_path / "ckpt", arch=graph.to_json(), weights=init_weights(graph, 0), metrics={})


def test_export_python_refuses_a_weights_path_that_is_a_directory(tmp_path: Path, checkpoint: Path) -> None:
    clash = tmp_path / "net.safetensors"
    clash.mkdir()
    (clash / "mine.txt").write_text("kept")
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "python",
                                 "--out", str(tmp_path / "net.py")])
    assert_one_line_error(result, f"cannot write {clash}: it is a directory")
    assert not (tmp_path / "net.py").exists() and (clash / "mine.txt").read_text() == "kept"


def test_export_onnx_refuses_an_external_data_path_that_is_a_directory(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxscript")
    monkeypatch.setattr(morphnas.export.onnx, "_EXTERNAL_DATA_BYTES", 0)  # as for a model over 1 GiB
    clash = tmp_path / "net.onnx.data"
    clash.mkdir()
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "net.onnx")])
    assert_one_line_error(result, f"cannot write {clash}: it is a directory")
    assert not (tmp_path / "net.onnx").exists()


# ---- GPUs without CUDA -------------------------------------------------------------------------


@NO_CUDA
def test_a_gpu_share_without_cuda_is_refused_by_every_check() -> None:
    check_devices(0)
    for call in (
        lambda: check_devices(0.25),
        lambda: LocalExecutor(gpus_per_child=0.25),
        lambda: make_executor("local", gpus_per_child=0.25),
    ):
        with pytest.raises(ConfigError, match="gpus_per_child is 0.25 but torch finds no CUDA device"):
            call()


def write_space(tmp_path: Path, space: dict = SPACE) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(space))  # JSON is YAML
    return path


def test_search_with_an_unknown_augmentation_is_one_line(tmp_path: Path) -> None:
    space = {**SPACE, "dataset": {"name": "digits", "augment": "rotate"}}
    args = ["search", "--space", str(write_space(tmp_path, space)), "--workdir", str(tmp_path / "runs"), "--study", "a"]
    assert_one_line_error(runner.invoke(app, args), "unknown augmentation 'rotate'", "affine")


@NO_CUDA
def test_search_with_a_gpu_share_without_cuda_is_one_line(tmp_path: Path) -> None:
    args = ["search", "--space", str(write_space(tmp_path)), "--workdir", str(tmp_path / "runs"), "--study", "g",
            "--gpus-per-child", "0.25"]
    assert_one_line_error(runner.invoke(app, args), "gpus_per_child is 0.25", "no CUDA device")
    assert not (tmp_path / "runs").exists(), "a study was created before the refusal"


# ---- Ray addresses -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_ray_address_fails_fast_on_what_does_not_answer() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at nohost.invalid:6379"):
        check_ray_address("nohost.invalid:6379")
    port = free_port()
    with pytest.raises(ConfigError, match=f"at ray://127.0.0.1:{port}: Connection refused"):
        check_ray_address(f"ray://127.0.0.1:{port}")
    assert time.monotonic() - started < 15
    check_ray_address("auto")  # Ray resolves it
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_ray_address(f"127.0.0.1:{listening.getsockname()[1]}")


def test_search_with_an_unknown_ray_host_is_one_line_within_seconds(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    args = ["search", "--space", str(write_space(tmp_path)), "--workdir", str(tmp_path / "runs"), "--study", "r",
            "--executor", "ray", "--ray-address", "nohost.invalid:6379"]
    started = time.monotonic()
    result = runner.invoke(app, args)
    assert_one_line_error(result, "cannot reach the Ray cluster at nohost.invalid:6379")
    assert time.monotonic() - started < 15
    assert not (tmp_path / "runs").exists(), "a study was created before the refusal"


def test_ray_connection_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from morphnas.execute.ray_executor import RayExecutor

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ConfigError, match="^cannot connect to Ray at auto: Could not find any running Ray instance.$"):
        RayExecutor(ray_address="auto")


def test_a_port_where_no_ray_listens_is_one_line_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from morphnas.execute.ray_executor import RayExecutor

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"^no Ray cluster answers at {address}: Timed out while waiting for GCS"):
            RayExecutor(ray_address=address)
    assert time.monotonic() - started < 15


JOIN_SCRIPT = textwrap.dedent("""
    import ray
    from morphnas.execute import ChildJob, DatasetSpec
    from morphnas.execute.ray_executor import RayExecutor
    from morphnas.ir import init_weights, mlp
    from morphnas.train import TrainConfig

    graph = mlp((1, 8, 8), 10, hidden=8)
    job = ChildJob(1, graph.to_json(), init_weights(graph, 0), TrainConfig(epochs=0.2, batch_size=64),
                   DatasetSpec("digits"))
    with RayExecutor(cpus_per_child=1) as executor:
        cpus = ray.cluster_resources().get("CPU")
        (result,) = executor.run([job])
    print("joined", cpus, result.status)
""")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_executor_joins_a_cluster_already_running_here() -> None:
    """``ray start --head`` left running: ``ray.init()`` joins it and refuses ``num_cpus``; the executor copes.

    RAY_TMPDIR keeps this cluster's address file away from other Ray users of the machine, its
    fixed-default ports are free ones, and the head runs in its own process group, which is what
    gets stopped (never ``ray stop``, which stops every Ray on the machine).
    """
    pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="mnr", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).with_name("ray")
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-port", "dashboard-agent-listen-port")]
    log = Path(tmp, "head.log")
    with log.open("w") as out:
        head = subprocess.Popen(
            [str(ray_cli), "start", "--head", *ports, "--num-cpus=1", "--include-dashboard=false", "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        address_file = Path(tmp, "ray", "ray_current_cluster")
        deadline = time.monotonic() + 60
        while not address_file.exists():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        driver = subprocess.run([sys.executable, "-c", JOIN_SCRIPT], env=env, capture_output=True, text=True,
                                timeout=150)
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert driver.stdout.strip().splitlines()[-1] == "joined 1.0 ok"  # the cluster's 1 CPU, not this machine's
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
            time.sleep(5)
            os.killpg(head.pid, signal.SIGKILL)  # the GCS and raylet outlive a SIGTERM
        head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- studies delete ----------------------------------------------------------------------------


def make_study(workdir: Path, name: str) -> Path:
    """A study as a search leaves it: one trial in the workdir's database, its checkpoints under studies/NAME."""
    study = optuna.create_study(study_name=name, storage=default_storage(workdir))
    study.set_user_attr("workdir", str(workdir))
    study.add_trial(optuna.trial.create_trial(value=0.5))
    checkpoint = workdir / "studies" / name / "trials" / "0"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.safetensors").write_text("x")
    return checkpoint.parent.parent


def listed(workdir: Path) -> list[str]:
    result = runner.invoke(app, ["studies", "list", "--workdir", str(workdir), "--json"])
    assert result.exit_code == 0, result.output
    return [row["name"] for row in json.loads(result.output)["studies"]]


def test_studies_delete_removes_the_study_and_its_directory_only(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    gone, kept = make_study(workdir, "gone"), make_study(workdir, "kept")
    result = runner.invoke(app, ["studies", "delete", "gone", "--yes", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"deleted study 'gone' (1 trial) and {gone}"
    assert listed(workdir) == ["kept"] and not gone.exists()
    assert (kept / "trials" / "0" / "weights.safetensors").is_file()


def test_studies_delete_asks_and_refuses_without_an_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    directory = make_study(workdir, "s")
    command = ["studies", "delete", "s", "--workdir", str(workdir)]
    assert_one_line_error(runner.invoke(app, command), "not deleting study 's' (1 trial)", "pass --yes")
    terminal = SimpleNamespace(stdin=SimpleNamespace(isatty=lambda: True))  # the runner's stdin is none
    monkeypatch.setattr(morphnas.cli.studies, "sys", terminal)
    declined = runner.invoke(app, command, input="n\n")
    assert declined.exit_code == 1 and f"delete study 's' (1 trial) and {directory}?" in declined.output
    assert listed(workdir) == ["s"] and directory.is_dir()
    assert runner.invoke(app, command, input="y\n").exit_code == 0
    assert listed(workdir) == [] and not directory.exists()


def test_studies_delete_errors_are_one_line(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    make_study(workdir, "s")
    result = runner.invoke(app, ["studies", "delete", "nope", "--yes", "--workdir", str(workdir)])
    assert_one_line_error(result, "no study named 'nope'", "studies: s")
    result = runner.invoke(app, ["studies", "delete", "s", "--yes", "--workdir", str(tmp_path / "elsewhere")])
    assert_one_line_error(result, "no study database at")


def test_studies_delete_never_removes_more_than_the_study_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    make_study(workdir, "kept")
    study = optuna.create_study(study_name="..", storage=default_storage(workdir))
    study.set_user_attr("workdir", str(workdir))
    result = runner.invoke(app, ["studies", "delete", "..", "--yes", "--workdir", str(workdir)])
    assert result.exit_code == 0 and result.output.strip() == "deleted study '..' (0 trials)", result.output
    assert listed(workdir) == ["kept"] and (workdir / "studies" / "kept" / "trials" / "0").is_dir()
