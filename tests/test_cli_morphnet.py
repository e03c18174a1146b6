"""``morphnas morphnet``: shrink-expand cycles from the command line, JSON report, checkpoint, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.ir import ArchGraph, arch_to_file, compile_graph, cost, load_arch
from morphnas.train import evaluate, load_checkpoint, load_dataset

runner = CliRunner()
KEYS = {"macs_before", "macs_after", "params_before", "params_after", "val_error_before", "val_error_after",
        "widths_before", "widths_after"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


def test_morphnet_json_with_a_relative_budget_writes_the_result(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["morphnet", "--arch", "cnn", "--dataset", "digits", "--target", "macs", "--budget", "0.5x",
            "--epochs", "1", "--strength", "4", "--seed", "1", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert KEYS <= set(report) and report["out"] == str(out.absolute())
    seed = load_arch("cnn", (1, 8, 8), 10)
    assert report["macs_before"] == cost(seed)["macs"] and report["params_before"] == cost(seed)["params"]
    assert report["budget"] == 0.5 * report["macs_before"]
    assert 0.8 * report["budget"] < report["macs_after"] <= report["budget"]
    assert report["widths_before"] == {"c1_conv": 16, "c2_conv": 32, "c3_conv": 64, "fc": 10}
    assert set(report["widths_after"]) == set(report["widths_before"]) and report["widths_after"]["fc"] == 10
    assert 0 <= report["val_error_before"] <= 1 and 0 <= report["val_error_after"] <= 1

    arch, weights, metrics = load_checkpoint(out)
    graph = ArchGraph.from_json(arch)
    assert cost(graph)["macs"] == report["macs_after"] and cost(graph)["params"] == report["params_after"]
    model = compile_graph(graph, weights)
    assert evaluate(model, load_dataset("digits").val) == report["val_error_after"]
    assert len(metrics["iterations"]) == 1 and metrics["iterations"][0]["factor"] > 0


def test_morphnet_prints_widths_and_takes_an_absolute_params_budget(tmp_path: Path) -> None:
    arch_file = tmp_path / "cnn.json"
    arch_to_file(load_arch("cnn", (1, 8, 8), 10), arch_file)
    budget = 20000
    result = runner.invoke(app, ["morphnet", "--arch", str(arch_file), "--dataset", "digits", "--target", "params",
                                 "--budget", str(budget), "--epochs", "0.5", "--iterations", "2",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "per-layer widths" in result.output and "c2_conv" in result.output and "cycle 2" in result.output
    arch, _, metrics = load_checkpoint(tmp_path / "run")
    assert cost(ArchGraph.from_json(arch))["params"] <= budget and len(metrics["iterations"]) == 2


@pytest.mark.parametrize("args,message", [
    (["--budget", "lots"], "--budget must be a number (e.g. 30000000) or a multiple of the seed's cost"),
    (["--budget", "-3x"], "--budget must be"),
    (["--budget", "0.5x", "--target", "flops"], "--target must be one of macs, params"),
    (["--budget", "10"], "below the cost of the narrowest network"),
])
def test_morphnet_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["morphnet", "--arch", "cnn", "--dataset", "digits", "--epochs", "0.2", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphnas: error: ") and message in lines[0]
    assert not (tmp_path / "o").exists()
