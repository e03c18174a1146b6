"""Bad values are named in the one-line error: the flag or field, the value, and what it must be."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from morphnas.cli import app

runner = CliRunner()
SPACE = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "seed": {"arch": "mlp", "epochs": 1, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5]}}},
    "budget": {"generations": 1, "children": 1},
}


@pytest.mark.parametrize("args,line", [
    (["search", "--epochs", "-2"], "--epochs must be > 0, got -2"),
    (["search", "--epochs", "0"], "--epochs must be > 0, got 0"),
    (["search", "--seed-epochs", "-1"], "--seed-epochs must be > 0, got -1"),
    (["search", "--objectives", "error,latency"], "default: objectives: 'latency' is not one of 'error', 'macs' or "
                                                  "'params'"),
    (["morphnet", "--arch", "mlp", "--budget", "-1"], "--budget must be positive, got '-1'"),
    (["grammar", "classify", "E"], "cannot read module 'E': No such file or directory (a module JSON file, or one "
                                   "of the paper's modules A, B, C, D)"),
])
def test_the_message_names_the_value_and_what_it_must_be(tmp_path, args, line):
    result = runner.invoke(app, [*args, *(["--workdir", str(tmp_path)] if args[0] == "search" else []),
                                 *(["--out", str(tmp_path / "o")] if args[0] == "morphnet" else [])])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"morphnas: error: {line}"]
    assert not (tmp_path / "morphnas.db").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch,line", [
    ("resnet9000", "seed.arch 'resnet9000': ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got 9000"),
    ("resnet", "seed.arch 'resnet': unknown network 'resnet'; seeds: resnet20, resnet32, resnet44, resnet56, "
               "resnet110, cnn, mlp (or a .json file)"),
])
def test_a_bad_seed_names_the_field(tmp_path, arch, line):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**SPACE, "seed": {**SPACE["seed"], "arch": arch}}))
    result = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"morphnas: error: {line}"]
