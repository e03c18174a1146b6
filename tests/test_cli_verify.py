"""``morphnas verify``: every registered morph at a seeded site, checked by the verifier."""

import json

import pytest
import torch
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.ir import ArchGraph, GlobalAvgPool, Identity, Linear, cnn
from morphnas.morph import MORPHS, TOLERANCE, MorphRecord, MorphResult, MorphSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting

runner = CliRunner()
KEYS = {"morph", "site", "exact", "max_rel_err", "train_max_rel_err", "tolerance", "ms"}


def run_json(*args: str) -> list[dict]:
    result = runner.invoke(app, ["verify", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_all_morphs_on_cnn_are_exact_and_cover_the_registry():
    rows = run_json("--arch", "cnn", "--input", "3x12x12")
    applicable = {name for name, spec in MORPHS.items() if spec.sites(cnn((3, 12, 12)))}
    assert {r["morph"] for r in rows} == applicable  # other engineers' morphs included
    assert {"deepen", "branch", "grow_kernel", "insert_bn", "insert_pact", "add_skip", "concat_skip"} <= applicable
    for r in rows:
        assert set(r) == KEYS and r["ms"] >= 0 and r["tolerance"] == TOLERANCE[torch.float32]
        assert not r["exact"] or r["max_rel_err"] <= TOLERANCE[torch.float32], r


def test_float64_single_morph_and_seeded_sites():
    args = ("--arch", "resnet20", "--input", "3x8x8", "--morph", "branch", "--dtype", "float64", "--seed", "4")
    first, again = run_json(*args), run_json(*args)
    assert len(first) == 1 and first[0]["morph"] == "branch" and first[0]["exact"]
    assert first[0]["max_rel_err"] <= TOLERANCE[torch.float64]
    assert first[0]["site"] == again[0]["site"] and first[0]["max_rel_err"] == again[0]["max_rel_err"]


def test_table_output():
    result = runner.invoke(app, ["verify", "--arch", "mlp", "--input", "3x4x4", "--morph", "deepen"])
    assert result.exit_code == 0, result.output
    assert "deepen" in result.output and "max rel err (eval)" in result.output and "train-mode err" in result.output


def _perturbing(exact: bool):
    """A fake morph that claims ``exact`` but scales the classifier's weights."""

    def fn(graph, weights, site, params, ctx):
        out = {**weights, f"{site}.weight": weights[f"{site}.weight"] * 1.01}
        return MorphResult(graph, out, exact, MorphRecord("fake", site, {}, 0))

    return MorphSpec("fake", fn, lambda g: ["fc"], lambda g, s, r: {}, exact)


@pytest.mark.parametrize("exact,status", [(True, 1), (False, 0)])
def test_exit_1_only_when_an_exact_morph_breaks_the_function(monkeypatch, exact, status):
    monkeypatch.setitem(MORPHS, "fake", _perturbing(exact))
    result = runner.invoke(app, ["verify", "--arch", "mlp", "--input", "3x4x4", "--morph", "fake", "--json"])
    assert result.exit_code == status, result.output
    assert json.loads(result.stdout)[0]["max_rel_err"] > 1e-3


def test_a_network_whose_outputs_ignore_its_input_is_refused(tmp_path):
    """input -> 0 x input -> pool -> fc: the outputs are fc's bias whatever the input, so any morph would verify."""
    graph = ArchGraph((3, 8, 8))
    for blob in ("input", "zero", "pool", "out"):
        graph.add_blob(blob)
    graph.add_layer("zero", "input", "zero", Identity(0.0))
    graph.add_layer("gap", "zero", "pool", GlobalAvgPool())
    graph.add_layer("fc", "pool", "out", Linear(3, 4))
    path = tmp_path / "constant.json"
    path.write_text(graph.validate().dumps())
    for dtype in ("float32", "float64"):
        result = runner.invoke(app, ["verify", "--arch", str(path), "--dtype", dtype])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "its outputs barely depend on its input (relative change 0 " in lines[0], lines


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arch", "cnn", "--morph", "nope"], "unknown morph 'nope'"),
        (["--arch", "resnet21"], "ResNet depth"),
        (["--arch", "nonet"], "unknown network"),
        (["--arch", "cnn", "--dtype", "float16"], "--dtype"),
        (["--arch", "mlp", "--morph", "branch"], "no site"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message):
    result = runner.invoke(app, ["verify", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphnas: error:") and message in lines[0], result.output
