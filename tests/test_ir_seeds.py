import pytest
import torch
from reference_nets import CNN, CNN_KEYS, MLP, MLP_KEYS, ResNet, resnet_key_map, trained_weights, translate

from morphnas.ir import ArchGraph, cnn, compile_graph, cost, init_weights, mlp, resnet

CASES = [
    ("resnet20-A-cifar", lambda: resnet(20), lambda: ResNet(20, 3, 10), resnet_key_map(20), (3, 32, 32)),
    ("resnet20-B-mnist", lambda: resnet(20, (1, 28, 28), 10, "B"), lambda: ResNet(20, 1, 10, "B"),
     resnet_key_map(20, "B"), (1, 28, 28)),
    ("resnet32-A-100", lambda: resnet(32, (3, 32, 32), 100), lambda: ResNet(32, 3, 100), resnet_key_map(32),
     (3, 32, 32)),
    ("cnn", lambda: cnn((1, 28, 28), 10), lambda: CNN(1, 10), CNN_KEYS, (1, 28, 28)),
    ("mlp", lambda: mlp((1, 28, 28), 10), lambda: MLP(784, 10), MLP_KEYS, (1, 28, 28)),
]


@pytest.mark.parametrize("name,ours,theirs,keys,shape", CASES, ids=[c[0] for c in CASES])
def test_compiled_seed_matches_hand_written_module(name, ours, theirs, keys, shape):
    graph = ours()
    weights = trained_weights(graph, seed=1)
    model = compile_graph(graph, weights).eval().double()
    reference = theirs()
    reference.load_state_dict(translate(weights, keys))
    reference = reference.eval().double()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_json_round_trip_is_identical(depth):
    data = resnet(depth).to_json()
    assert ArchGraph.from_json(data).to_json() == data
    assert ArchGraph.loads(resnet(depth).dumps()).to_json() == data


def test_cnn_and_mlp_round_trip():
    for graph in (cnn(), mlp()):
        assert ArchGraph.from_json(graph.to_json()).to_json() == graph.to_json()


# Table 1 of the 2017 paper: (MB of stored floats, million MACs). Projection shortcuts (B) are the
# paper's Caffe models; option A is He et al.'s and our default. The arithmetic:
# docs/design.md#resnet-shortcuts-option-a-and-b.
TABLE1 = {20: (1.048, 40.8), 56: (3.289, 125.7), 110: (6.649, 253.1)}
ISSUE_FIGURES = {20: (1.048, 40.8), 56: (3.311, 125.8), 110: (6.672, 253.2)}


@pytest.mark.parametrize("depth", [20, 56, 110])
@pytest.mark.parametrize("shortcut,tolerance", [("B", 0.004), ("A", 0.014)])
def test_resnet_cost_matches_table1(depth, shortcut, tolerance):
    c = cost(resnet(depth, shortcut=shortcut))
    mb, macs = TABLE1[depth]
    assert abs(c["size_mb"] - mb) / mb <= tolerance
    assert abs(c["macs"] / 1e6 - macs) / macs <= tolerance
    mb2, macs2 = ISSUE_FIGURES[depth]
    assert abs(c["size_mb"] - mb2) / mb2 <= 0.02 and abs(c["macs"] / 1e6 - macs2) / macs2 <= 0.02


def test_resnet20_option_a_exact_counts():
    c = cost(resnet(20))
    assert c["params"] == 269_722
    # 40.55 M with option A, 40.81 M with projections: docs/design.md#resnet-shortcuts-option-a-and-b
    assert c["macs"] == 40_551_040
    assert cost(resnet(20, shortcut="B"))["macs"] == 40_813_184


def test_compiled_module_exports():
    graph = resnet(20, (1, 28, 28))
    model = compile_graph(graph, init_weights(graph)).eval()
    x = torch.randn(2, 1, 28, 28)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))


def test_forward_is_straight_line():
    code = compile_graph(resnet(20)).code
    assert "for " not in code and "while " not in code
