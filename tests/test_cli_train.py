"""``morphnas train``: trains, writes a checkpoint that reloads to the same errors, reports."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.ir import ArchGraph, arch_to_file, compile_graph, load_arch
from morphnas.train import evaluate, load_checkpoint, load_dataset

runner = CliRunner()


def test_train_json_writes_a_checkpoint_that_reloads_to_the_same_errors(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--arch", "cnn", "--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"val_error", "test_error", "seconds", "epochs", "out"}
    assert report["out"] == str(out.absolute()) and report["epochs"] == 3
    assert report["test_error"] < 0.15 and 0 <= report["val_error"] < 0.15

    arch, weights, metrics = load_checkpoint(out)
    assert metrics["test_error"] == report["test_error"] and len(metrics["history"]) == 3
    model = compile_graph(ArchGraph.from_json(arch), weights)
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    data = load_dataset("digits")
    assert evaluate(model, data.test) == report["test_error"]
    assert evaluate(model, data.val) == report["val_error"]

    again = runner.invoke(app, [*args, "--json"])  # same seed: same run; the checkpoint is replaced
    assert json.loads(again.output)["test_error"] == report["test_error"]


def test_train_prints_a_summary_and_takes_an_architecture_file(tmp_path: Path) -> None:
    arch_file = tmp_path / "mlp.json"
    arch_to_file(load_arch("mlp", (1, 8, 8), 10), arch_file)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--arch", str(arch_file), "--dataset", "digits", "--epochs", "0.5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "val error" in result.output and "test error" in result.output and "params" in result.output
    assert f"{arch_file} on digits: epoch 1/1  loss" in result.output  # one line an epoch in a pipe
    assert load_checkpoint(out)[2]["epochs"] == 4 / 9  # 1,257 images: 9 batches of 128 an epoch, 4 of them run


def test_train_augment_names_a_kind_and_the_checkpoint_records_it(tmp_path: Path) -> None:
    args = ["train", "--arch", "cnn", "--dataset", "digits", "--epochs", "1", "--json"]
    runs = {}
    for kind in ("default", "shift", "affine"):
        result = runner.invoke(app, [*args, "--augment", kind, "--out", str(tmp_path / kind)])
        assert result.exit_code == 0, result.output
        runs[kind] = load_checkpoint(tmp_path / kind)[2]
    assert [runs[kind]["augment"] for kind in runs] == ["none", "shift", "affine"]  # digits' own kind is none
    losses = {kind: runs[kind]["train_loss"] for kind in runs}
    assert len(set(losses.values())) == 3, losses  # same seed, three different training streams


def test_train_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    arch_file = tmp_path / "big.json"
    arch_to_file(load_arch("mlp", (1, 28, 28), 10), arch_file)
    (tmp_path / "keep.txt").write_text("x")
    cases = [
        (["--arch", "cnn", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--arch", "nope", "--dataset", "digits"], "unknown network 'nope'"),
        (["--arch", str(arch_file), "--dataset", "digits"], "takes 1x28x28 inputs but digits has 1x8x8"),
        (["--arch", "cnn", "--dataset", "digits", "--epochs", "-1"], "epochs must be > 0"),
        (["--arch", "cnn", "--dataset", "digits", "--augment", "rotate"], "'rotate' is not one of 'default', 'none'"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["train", *options, "--out", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
    result = runner.invoke(
        app, ["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "0.2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert (tmp_path / "keep.txt").exists()
