"""The layer recipe: a layer type defined here, and nowhere in morphnas, compiles, costs, round-trips
through JSON, exports to standalone source, and width morphs widen and shrink across it."""

import importlib.util
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from reference_nets import trained_weights
from torch import nn

from morphnas.export import export_python
from morphnas.ir import ArchGraph, BatchNorm2d, Conv2d, Flatten, Layer, Linear, compile_graph, cost
from morphnas.ir.layers import Shape
from morphnas.morph import apply_morph, verify
from morphnas.morphnet import shrink

pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny net: a second thread only adds waiting


@dataclass(frozen=True)
class LeakyReLU(Layer):
    """A leaky ReLU: everything a new layer type states, in one class."""

    type: ClassVar[str] = "recipe_leaky_relu"  # a name morphnas itself will not take
    negative_slope: float = 0.01

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def build(self) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)

    def channel_role(self, shape: Shape) -> str:
        return "pass"  # channel i to channel i, no parameters: the width morphs cross it

    def source_inline(self, value: str) -> str:
        return f"F.leaky_relu({value}, {float(self.negative_slope)!r})"


def recipe_graph() -> ArchGraph:
    g = ArchGraph((3, 8, 8))
    g.add_blob("input")
    previous = "input"
    for name, layer in [("conv1", Conv2d(3, 8, 3, 1, 1, bias=False)), ("bn1", BatchNorm2d(8)),
                        ("leaky1", LeakyReLU(0.2)), ("conv2", Conv2d(8, 6, 3, 2, 1)), ("leaky2", LeakyReLU()),
                        ("flat", Flatten()), ("fc", Linear(6 * 4 * 4, 5))]:
        g.add_blob(name)
        g.add_layer(name, previous, name, layer)
        previous = name
    return g.validate()


@pytest.fixture()
def net():
    graph = recipe_graph()
    return graph, trained_weights(graph, seed=3)


def assert_exact(parent, weights, child, child_weights) -> None:
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        check = verify(parent, weights, child, child_weights, dtype=dtype)
        assert check.max_rel_err <= tol and check.train_max_rel_err <= tol, (dtype, check)


def test_compile_and_cost(net):
    graph, weights = net
    module = compile_graph(graph, weights).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    w = {k: v.detach() for k, v in weights.items()}
    h = nn.functional.batch_norm(nn.functional.conv2d(x, w["conv1.weight"], padding=1), w["bn1.running_mean"],
                                 w["bn1.running_var"], w["bn1.weight"], w["bn1.bias"])
    h = nn.functional.conv2d(nn.functional.leaky_relu(h, 0.2), w["conv2.weight"], w["conv2.bias"], 2, 1)
    expected = nn.functional.linear(nn.functional.leaky_relu(h).flatten(1), w["fc.weight"], w["fc.bias"])
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-6)
    conv1, conv2, fc = 8 * 8 * 8 * 3 * 9, 6 * 4 * 4 * 8 * 9, 96 * 5  # the leaky ReLUs cost no MACs
    params = 8 * 3 * 9 + 2 * 8 + 6 * 8 * 9 + 6 + 96 * 5 + 5
    assert cost(graph)["macs"] == conv1 + conv2 + fc and cost(graph)["params"] == params


def test_json_round_trip():
    graph = recipe_graph()
    text = graph.dumps()
    assert '"type": "recipe_leaky_relu"' in text
    back = ArchGraph.loads(text)
    assert back.layer("leaky1") == LeakyReLU(0.2) and back.dumps() == text


def test_standalone_source_runs_and_matches(net, tmp_path):
    graph, weights = net
    path = tmp_path / "leaky.py"
    assert export_python(graph, weights, path) <= 1e-5  # the export imports the file and compares too
    source = path.read_text()
    assert "F.leaky_relu(x, 0.2)" in source and "morphnas" not in source.split('"""', 2)[2]
    spec = importlib.util.spec_from_file_location("recipe_leaky_export", path)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = generated.load()(x)
        assert torch.allclose(out, compile_graph(graph, weights).eval()(x), atol=1e-6)


def test_widen_across_it_is_exact(net):
    graph, weights = net
    result = apply_morph("widen", graph, weights, "leaky1", {"channels": 13}, seed=2)
    assert result.graph.shapes()["bn1"] == (13, 8, 8) and result.graph.shapes()["leaky1"] == (13, 8, 8)
    assert result.graph.layer("conv2").in_channels == 13
    assert_exact(graph, weights, result.graph, result.weights)


def test_shrink_across_it_removes_dead_channels_exactly(net):
    graph, weights = net
    dead = [1, 4, 6]
    for param in ("bn1.weight", "bn1.bias"):  # gamma = beta = 0: the channel outputs leaky_relu(0) = 0
        weights[param][dead] = 0.0
    result = shrink(graph, weights, threshold=1e-3)
    assert result.removal.removed_channels == {"conv1": len(dead)}
    assert result.graph.shapes()["leaky1"] == (8 - len(dead), 8, 8)
    assert result.graph.layer("conv2").in_channels == 8 - len(dead)
    assert_exact(graph, weights, result.graph, result.weights)
    kept = 8 - len(dead)
    assert cost(result.graph)["macs"] == 8 * 8 * kept * 3 * 9 + 6 * 4 * 4 * kept * 9 + 96 * 5
