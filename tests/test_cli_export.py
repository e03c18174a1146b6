"""``morphnas export`` on a real (tiny) search: every format, chosen trials, checkpoints, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from sklearn.datasets import load_digits
from typer.testing import CliRunner

import morphnas.export.formats as formats
from morphnas.cli import app
from morphnas.export import load
from morphnas.grammar.space import parse_space
from morphnas.ir import ArchGraph, compile_graph
from morphnas.search import SearchOptions, load_study, open_storage, run_search, trial_checkpoint
from morphnas.train import load_checkpoint, load_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A real search (digits, cnn seed, one generation of two widened children) plus one FAIL trial."""
    workdir = tmp_path_factory.mktemp("runs")
    space = parse_space({
        "name": "tiny",
        "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 0.5, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}},
        "finetune": {"lr": {"low": 0.01, "high": 0.05, "log": True}, "epochs": 0.5, "batch_size": 64},
        "budget": {"generations": 1, "children": 2},
    })
    summary = run_search(SearchOptions(space=space, workdir=workdir, study="t", seed=0))
    storage = open_storage(summary.storage)
    opt_study = optuna.load_study(study_name="t", storage=storage)
    failed = opt_study.ask()
    failed.set_user_attr("reason", "TrainingDivergedError: loss is nan")
    opt_study.tell(failed, state=TrialState.FAIL)
    trials = load_study(storage, "t").get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3 and trials[-1].state == TrialState.FAIL
    assert trials[1].user_attrs["morphs"][0]["name"] == "widen"  # trial 1 (exported below) is a widened child
    return {"workdir": workdir, "storage": summary.storage, "best": summary.best_trial, "failed": failed.number,
            "study": load_study(storage, "t")}


def checkpoint_of(study: dict, number: int) -> tuple[torch.nn.Module, dict, Path]:
    trial = study["study"].get_trials()[number]
    directory = trial_checkpoint(study["study"], trial)
    arch, weights, metrics = load_checkpoint(directory)
    return compile_graph(ArchGraph.from_json(arch), weights).eval(), metrics, directory


def logits(module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.as_tensor(module(x))


X = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # raw pixels in [0, 1]


def normalised(x: torch.Tensor, metrics: dict) -> torch.Tensor:
    """What the trained network expects: ``x`` normalised with the training data's statistics."""
    stats = metrics["normalisation"]
    return (x - torch.tensor(stats["mean"]).view(1, -1, 1, 1)) / torch.tensor(stats["std"]).view(1, -1, 1, 1)


def invoke(*args: str):
    return runner.invoke(app, ["export", *args])


def test_best_trial_to_python_source(study, tmp_path):
    out = tmp_path / "best_net.py"
    result = invoke("t", "--workdir", str(study["workdir"]), "--format", "python", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"trial {study['best']} of study 't'" in result.stdout and "takes raw pixels" in result.stdout
    assert (tmp_path / "best_net.safetensors").is_file()
    spec = importlib.util.spec_from_file_location("best_net_cli", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference, metrics, _ = checkpoint_of(study, study["best"])
    assert (logits(module.load(), X) - logits(reference, normalised(X, metrics))).abs().max() <= 1e-5


def test_chosen_trial_to_a_bundle_with_its_metrics(study, tmp_path):
    out = tmp_path / "bundle"
    result = invoke("t", "--storage", study["storage"], "--trial", "1", "--format", "safetensors", "--out", str(out))
    assert result.exit_code == 0, result.output
    reference, metrics, _ = checkpoint_of(study, 1)
    stats = metrics["normalisation"]
    assert json.loads((out / "metrics.json").read_text()) == {
        **metrics, "input": {"raw_pixels": True, "mean": stats["mean"], "std": stats["std"]}}
    assert (logits(load(out), X) - logits(reference, normalised(X, metrics))).abs().max() <= 1e-5

    (out / "metrics.json").unlink()  # a bundle without metrics is accepted by --checkpoint too
    again = invoke("--checkpoint", str(out), "--format", "safetensors", "--out", str(tmp_path / "copy"))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["arch.json", "weights.safetensors"]


def test_checkpoint_directory_to_pt2_format_from_suffix(study, tmp_path):
    reference, _, directory = checkpoint_of(study, 0)
    out = tmp_path / "seed.pt2"
    result = invoke("--checkpoint", str(directory), "--out", str(out), "--no-preprocess")
    assert result.exit_code == 0, result.output
    assert "as pt2" in result.stdout and "torch.export.load" in result.stdout
    program = torch.export.load(str(out)).module()
    assert (logits(program, X) - logits(reference, X)).abs().max() <= 1e-5


def test_onnx_mismatch_exits_1_and_keeps_the_file(study, tmp_path, monkeypatch):
    """One ONNX export through the CLI (they are slow): a forced mismatch exits 1; the file itself is right."""
    import onnxruntime as ort

    monkeypatch.setattr(formats, "ONNX_TOLERANCE", -1.0)  # any difference, even 0, is now a mismatch
    out = tmp_path / "best.onnx"
    result = invoke("t", "--workdir", str(study["workdir"]), "--trial", "best", "--format", "onnx", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("morphnas: error: ONNX export") and len(result.stderr.splitlines()) == 1
    assert "tolerance -1" in result.stderr and "Traceback" not in result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference, _, _ = checkpoint_of(study, study["best"])
    got = torch.from_numpy(session.run(None, {"input": X.numpy()})[0])
    _, metrics, _ = checkpoint_of(study, study["best"])
    assert (got - logits(reference, normalised(X, metrics))).abs().max() <= 1e-4


def test_onnx_export_fed_raw_pixels_gives_the_study_test_error(study, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "best.onnx"
    result = invoke("t", "--workdir", str(study["workdir"]), "--out", str(out))
    assert result.exit_code == 0, result.output
    bunch = load_digits()  # the raw data set: pixels 0-16, scaled to [0, 1] as the data set is read
    data = load_dataset("digits")
    stats = checkpoint_of(study, study["best"])[1]["normalisation"]
    raw = data.test.x * torch.tensor(stats["std"]).view(1, -1, 1, 1) + torch.tensor(stats["mean"]).view(1, -1, 1, 1)
    rows = {tuple(r.astype(int)) for r in bunch.data}
    assert all(tuple(np.round(x.flatten().numpy() * 16).astype(int)) in rows for x in raw)  # really raw images
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": raw.numpy()})[0].argmax(1)
    error = float((torch.from_numpy(predicted) != data.test.y).float().mean())
    assert error == pytest.approx(study["study"].user_attrs[f"test_error/{study['best']}"], abs=1e-9)


def test_user_errors_are_one_line_and_exit_2(study, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    wd = ["--workdir", str(study["workdir"])]
    cases = [
        (["nope", *wd, "--out", str(tmp_path / "a.py")], "no study named 'nope'"),
        (["t", *wd, "--trial", "99", "--out", str(tmp_path / "a.py")], "has no trial 99"),
        (["t", *wd, "--trial", str(study["failed"]), "--out", str(tmp_path / "a.py")], "FAIL and has no checkpoint"),
        (["t", *wd, "--trial", "two", "--out", str(tmp_path / "a.py")], "--trial must be a trial number"),
        (["t", *wd, "--out", str(blocker / "a.onnx")], "cannot write"),
        (["t", *wd, "--format", "tflite", "--out", str(tmp_path / "a")], "unknown --format 'tflite'"),
        (["t", *wd, "--out", str(tmp_path / "a.tflite")], "cannot tell the export format"),
        (["t", "--workdir", str(tmp_path), "--out", str(tmp_path / "a.py")], "no study database"),
        (["--out", str(tmp_path / "a.py")], "exactly one"),
        (["t", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "a.py")], "exactly one"),
        (["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "a.py")], "no bundle or checkpoint at"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "morphnas.db").exists()  # a mistyped --workdir creates no database
