"""A search starts from the user's own network: a PyTorch module, or a checkpoint (warm start)."""

import sys
import textwrap

import onnxruntime as ort
import pytest
import yaml
from test_search import tiny_space
from test_userdata import write_images
from torch import nn
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.execute import LocalExecutor
from morphnas.grammar.space import parse_space
from morphnas.ir import ArchGraph, compile_graph, from_torch
from morphnas.search import SearchOptions, load_study, open_storage, run_search, trial_checkpoint
from morphnas.search.study import default_storage, study_names
from morphnas.train import TrainConfig, load_checkpoint, load_dataset, save_checkpoint, train

pytestmark = pytest.mark.slow
runner = CliRunner()
NETS = """
from torch import nn

def tiny(classes=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))

def five():
    return tiny(classes=5)
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.setdefault("usernets", __import__("usernets"))
    sys.modules.pop("usernets", None)


def search_from(tmp_path, arch, **seed):
    space = tiny_space(seed={"arch": arch, "epochs": 2, "lr": 0.1, "batch_size": 64, **seed},
                       budget={"generations": 1, "children": 2})
    options = SearchOptions(space=parse_space(space), workdir=tmp_path / "w", study="s",
                            executor=LocalExecutor(cpus_per_child=1), seed=3)
    summary = run_search(options)
    return summary, load_study(open_storage(summary.storage), "s")


def test_a_search_grows_a_pytorch_module_imported_at_the_data_sets_shape(tmp_path, nets):
    summary, study = search_from(tmp_path, "usernets:tiny")
    seed = study.trials[0]
    arch, _, _ = load_checkpoint(trial_checkpoint(study, seed))
    assert ArchGraph.from_json(arch).to_json() == from_torch(nets.tiny(), (1, 8, 8)).graph.to_json()
    children = [t for t in study.trials if t.user_attrs["generation"] == 1]
    assert len(children) == 2 and all(t.user_attrs["parent"] == 0 for t in children)
    assert summary.val_error < 0.8  # it learned: chance is 0.9


def test_a_checkpoint_seed_is_a_warm_start_from_its_weights(tmp_path, nets):
    imported = from_torch(nets.tiny(), (1, 8, 8))
    model = compile_graph(imported.graph, imported.weights)
    trained = train(model, load_dataset("digits"), TrainConfig(epochs=30, lr=0.1, batch_size=64))
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "mine", arch=imported.graph.to_json(), weights=weights, metrics={})
    # a seed phase that barely moves the weights: the seed is as good as the checkpoint, not random
    summary, study = search_from(tmp_path, str(tmp_path / "mine"), epochs=0.2, lr=1e-9)
    assert study.trials[0].values[0] <= trained.val_error + 0.05 and trained.val_error < 0.3
    # the same as an architecture JSON file with seed.weights
    (tmp_path / "mine.json").write_text(imported.graph.dumps())
    summary, study = search_from(tmp_path / "json", str(tmp_path / "mine.json"), epochs=0.2, lr=1e-9,
                                 weights=str(tmp_path / "mine" / "weights.safetensors"))
    assert study.trials[0].values[0] <= trained.val_error + 0.05


@pytest.mark.parametrize("arch,weights,message", [
    ("{tmp}/tiny.json", "{tmp}/rgb/weights.safetensors", "do not fit '{tmp}/tiny.json': weights do not fit the graph"),
    ("{tmp}/rgb", "{tmp}/rgb/weights.safetensors", "brings its own weights"),
    ("{tmp}/tiny.json", "{tmp}/tiny.json", "tiny.json is corrupt or unreadable"),
])
def test_seed_weights_that_do_not_fit_are_one_line_before_any_study(tmp_path, nets, arch, weights, message):
    rgb = from_torch(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(), nn.Linear(256, 10)), (1, 8, 8))
    save_checkpoint(tmp_path / "rgb", arch=rgb.graph.to_json(), weights=rgb.weights, metrics={})
    (tmp_path / "tiny.json").write_text(from_torch(nets.tiny(), (1, 8, 8)).graph.dumps())
    seed = {"arch": arch.format(tmp=tmp_path), "weights": weights.format(tmp=tmp_path), "epochs": 1, "lr": 0.1,
            "batch_size": 64}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(tiny_space(seed=seed)))
    result = runner.invoke(app, ["search", "--space", str(tmp_path / "space.yaml"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], result.output
    assert not study_names(open_storage(default_storage(tmp_path / "w")))


@pytest.mark.parametrize("arch,message", [
    ("usernets:five", "the network has 5 outputs but digits has 10 classes"),
    ("usernets:nothing", "has no attribute 'nothing'"),
    ("{tmp}", "is a directory without an arch.json"),
    ("{tmp}/rgb", "the network takes 3x8x8 inputs but digits has 1x8x8"),
])
def test_a_seed_that_does_not_fit_is_one_line_before_any_study(tmp_path, nets, arch, message):
    rgb = from_torch(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(256, 10)), (3, 8, 8))
    save_checkpoint(tmp_path / "rgb", arch=rgb.graph.to_json(), weights=rgb.weights, metrics={})
    space = tiny_space(seed={"arch": arch.format(tmp=tmp_path), "epochs": 1, "lr": 0.1, "batch_size": 64})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    result = runner.invoke(app, ["search", "--space", str(tmp_path / "space.yaml"), "--workdir", str(tmp_path / "w"),
                                 "--executor", "local"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not study_names(open_storage(default_storage(tmp_path / "w")))


def test_a_torchvision_seed_fitted_to_grey_digits_says_how_once(tmp_path):
    """resnet18 on digits (grey 8x8 images, 10 classes): the search says, before the seed trains, in one line
    each and once, that the first convolution's RGB kernels were summed and the head replaced."""
    space = tiny_space(seed={"arch": "torchvision:resnet18", "epochs": 1, "lr": 0.02, "batch_size": 64},
                       budget={"generations": 1, "children": 1})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    result = runner.invoke(app, ["search", "--space", str(tmp_path / "space.yaml"), "--workdir", str(tmp_path / "w"),
                                 "--study", "grey", "--seed", "3", "--executor", "local"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    notes = [n for n, line in enumerate(lines) if "torchvision:resnet18:" in line]
    assert [lines[n] for n in notes] == [
        "seed torchvision:resnet18: grey input: conv1's RGB kernels summed into one channel",
        "seed torchvision:resnet18: 10 classes: head fc (1000 outputs) replaced by a fresh one (seed 3)",
    ]
    assert lines[notes[-1] + 1].startswith("training seed torchvision:resnet18 ")


def test_a_search_from_torchvision_resnet18_on_an_image_folder_ends_with_an_export(tmp_path):
    """Issue #14's end to end: your network (torchvision's resnet18), your images, a search, an ONNX file."""
    write_images(tmp_path / "pets", n=12, size=(24, 20))  # two classes of 12 RGB PNGs
    space = tiny_space(dataset={"name": f"imagefolder:{tmp_path / 'pets'}", "image_size": 16},
                       seed={"arch": "torchvision:resnet18", "epochs": 1, "lr": 0.02, "batch_size": 8},
                       budget={"generations": 2, "children": 2})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    result = runner.invoke(app, ["search", "--space", str(tmp_path / "space.yaml"), "--workdir", str(tmp_path / "w"),
                                 "--study", "pets", "--json"])
    assert result.exit_code == 0, result.output
    study = load_study(open_storage(default_storage(tmp_path / "w")), "pets")
    assert {t.user_attrs["generation"] for t in study.trials} >= {0, 1, 2}
    out = tmp_path / "pets.onnx"
    exported = runner.invoke(app, ["export", "pets", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert shape[1:] == [3, 16, 16] and session.get_outputs()[0].shape[1] == 2
