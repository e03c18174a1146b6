"""Checkpoints: round trip, atomic replacement, corrupt or partial directories, kill safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from morphnas.errors import CheckpointError
from morphnas.train import TrainConfig, evaluate, load_checkpoint, load_dataset, save_checkpoint, train


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_round_trip_of_awkward_tensors(tmp_path: Path) -> None:
    shared = torch.randn(4, 5)
    weights = {
        "a.weight": shared,
        "b.weight": shared,  # tied: the same storage twice
        "t.weight": torch.randn(5, 3).t(),  # not contiguous
        "c.weight": torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last),
        "bn.num_batches_tracked": torch.tensor(7),
        "half.weight": torch.randn(3).half(),
        "requires.grad": nn.Parameter(torch.randn(2)),
    }
    arch = {"version": 1, "edges": [{"name": "a", "type": "conv"}]}
    metrics = {"val_error": 0.125, "test_error": None, "history": [0.5, 0.25]}
    path = save_checkpoint(tmp_path / "ckpt", arch=arch, weights=weights, metrics=metrics)
    assert path == tmp_path / "ckpt"
    assert sorted(p.name for p in path.iterdir()) == ["arch.json", "metrics.json", "weights.safetensors"]
    got_arch, got_weights, got_metrics = load_checkpoint(path)
    assert got_arch == arch and got_metrics == metrics
    assert set(got_weights) == set(weights)
    for key, value in weights.items():
        assert got_weights[key].dtype == value.dtype and torch.equal(got_weights[key], value.detach())
    assert _siblings(path) == ["ckpt"]  # no temporary directory left behind


def test_replacing_a_checkpoint_leaves_only_the_new_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    save_checkpoint(target, arch={"n": 1}, weights={"w": torch.ones(3)}, metrics={"n": 1})
    save_checkpoint(target, arch={"n": 2}, weights={"w": torch.zeros(3)}, metrics={"n": 2})
    arch, weights, metrics = load_checkpoint(target)
    assert arch == {"n": 2} and metrics == {"n": 2} and torch.equal(weights["w"], torch.zeros(3))
    assert _siblings(target) == ["out"]


def test_creates_parents_and_accepts_an_empty_directory(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a" / "b", arch={}, weights={}, metrics={})
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", arch={"x": 1}, weights={}, metrics={})
    assert load_checkpoint(tmp_path / "a" / "b") == ({}, {}, {})
    assert load_checkpoint(tmp_path / "empty")[0] == {"x": 1}


def test_refuses_to_replace_something_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(tmp_path, arch={}, weights={}, metrics={})
    (tmp_path / "file").write_text("keep me too")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(tmp_path / "file", arch={}, weights={}, metrics={})
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unserialisable_metrics_fail_before_touching_the_old_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "out"
    save_checkpoint(target, arch={"n": 1}, weights={"w": torch.ones(1)}, metrics={"n": 1})
    with pytest.raises(CheckpointError, match=r"metrics\.json is not JSON serialisable"):
        save_checkpoint(target, arch={}, weights={}, metrics={"val_error": float("nan")})
    with pytest.raises(CheckpointError, match="arch.json"):
        save_checkpoint(target, arch={"f": object()}, weights={}, metrics={})
    assert load_checkpoint(target)[0] == {"n": 1}
    assert _siblings(target) == ["out"]


def test_missing_and_corrupt_files_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nothing")
    target = save_checkpoint(tmp_path / "c", arch={"a": 1}, weights={"w": torch.randn(100)}, metrics={})
    weights = (target / "weights.safetensors").read_bytes()

    (target / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete: missing metrics.json"):
        load_checkpoint(target)
    (target / "metrics.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="does not hold a JSON object"):
        load_checkpoint(target)
    (target / "metrics.json").write_text("{}")
    (target / "arch.json").write_text('{"a": ')
    with pytest.raises(CheckpointError, match="arch.json is not valid JSON"):
        load_checkpoint(target)
    (target / "arch.json").write_text("{}")
    for corrupt in (weights[: len(weights) // 2], b"", b"\xff" * 64):
        (target / "weights.safetensors").write_bytes(corrupt)
        with pytest.raises(CheckpointError, match="weights.safetensors is corrupt") as info:
            load_checkpoint(target)
        assert "\n" not in str(info.value)


_WRITER = """
import sys, torch
from morphnas.train.checkpoint import save_checkpoint
print("ready", flush=True)
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], arch={"i": i}, weights={"w": torch.full((2_000_000,), float(i))},
                    metrics={"i": i})
    print("saved", flush=True)
"""


def test_a_writer_killed_at_random_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(0)
    target = tmp_path / "ckpt"
    complete = 0
    for attempt in range(5):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        if attempt > 0:  # the first may die in its first save; later ones after a finished save
            assert writer.stdout.readline() == "saved\n"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        try:
            arch, weights, metrics = load_checkpoint(target)
        except CheckpointError:
            continue
        complete += 1
        assert arch == metrics and weights["w"].shape == (2_000_000,)
        assert torch.equal(weights["w"], torch.full((2_000_000,), float(arch["i"])))
    assert complete >= 3  # a checkpoint existed before each later kill: it (or a newer one) must load


def test_reloaded_weights_give_the_same_test_error(tmp_path: Path) -> None:
    data = load_dataset("digits")

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10)
        )

    torch.manual_seed(0)
    model = build()
    result = train(model, data, TrainConfig(epochs=2, batch_size=64), evaluate_test=True)
    save_checkpoint(
        tmp_path / "c", arch={"name": "tiny"}, weights=dict(model.state_dict()),
        metrics={"test_error": result.test_error},
    )
    _, weights, metrics = load_checkpoint(tmp_path / "c")
    fresh = build()
    fresh.load_state_dict(weights)
    assert evaluate(fresh, data.test) == metrics["test_error"] == result.test_error
    assert result.test_error < 0.2
