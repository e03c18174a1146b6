import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morphnas.errors import GraphError
from morphnas.ir import (
    Activation,
    ArchGraph,
    BatchNorm2d,
    Conv2d,
    Identity,
    Pool2d,
    ShortcutA,
    compile_graph,
    init_weights,
    layer_from_dict,
    resnet,
)


def small() -> ArchGraph:
    g = ArchGraph((3, 8, 8))
    for blob in ("input", "a", "b"):
        g.add_blob(blob)
    g.add_layer("conv", "input", "a", Conv2d(3, 4, 3, padding=1))
    g.add_layer("act", "a", "b", Activation("relu"))
    return g.validate()


def test_cycle_is_rejected_naming_a_layer():
    g = small()
    g.add_layer("back", "b", "a", Identity())
    with pytest.raises(GraphError, match="cycle through layer"):
        g.validate()


def test_two_sinks_rejected():
    g = small()
    g.add_blob("c")
    g.add_layer("extra", "a", "c", Identity())
    with pytest.raises(GraphError, match="exactly one sink"):
        g.validate()


def test_shape_mismatch_at_addition_names_both_layers():
    g = small()
    g.add_layer("skip", "input", "b", Identity())
    with pytest.raises(GraphError, match="blob 'b' adds layer 'act' of shape \\(4, 8, 8\\) and layer 'skip'"):
        g.validate()


def test_channel_mismatch_names_the_layer():
    g = small()
    g.set_layer("conv", Conv2d(5, 4, 3, padding=1))
    with pytest.raises(GraphError, match="layer 'conv' .*expects 5 input channels, got 3"):
        g.validate()


def test_unknown_layer_type_and_negative_channels():
    with pytest.raises(GraphError, match="unknown layer type 'conv9d'"):
        layer_from_dict({"type": "conv9d"})
    with pytest.raises(GraphError, match="out_channels must be a positive integer, got -4"):
        layer_from_dict({"type": "conv2d", "in_channels": 3, "out_channels": -4, "kernel_size": 3})
    with pytest.raises(GraphError, match="has no field"):
        layer_from_dict({"type": "activation", "kind": "relu", "colour": "red"})


def test_malformed_json_text():
    with pytest.raises(GraphError, match="malformed JSON"):
        ArchGraph.loads("{not json")
    with pytest.raises(GraphError, match="format"):
        ArchGraph.loads("[]" if False else '{"format": "x"}')
    data = resnet(20).to_json()
    data["layers"][3]["src"] = "nowhere"
    with pytest.raises(GraphError, match="unknown blob 'nowhere'"):
        ArchGraph.from_json(data)


def test_concat_blob_compiles_in_order():
    import torch

    g = ArchGraph((2, 4, 4))
    g.add_blob("input")
    g.add_blob("cat", merge="concat")
    g.add_layer("second", "input", "cat", Identity(2.0))
    g.add_layer("first", "input", "cat", Identity())
    g.nx.nodes["cat"]["order"] = ["first", "second"]
    assert g.shapes()["cat"] == (4, 4, 4)
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(compile_graph(g)(x), torch.cat([x, 2 * x], 1))
    assert ArchGraph.from_json(g.to_json()).to_json() == g.to_json()


def test_mul_blob_scales_every_pixel_by_a_1x1_operand_and_refuses_other_shapes():
    """Squeeze-and-excitation's ``scale * x``: a (C, 1, 1) operand broadcasts over (C, H, W)."""
    import torch

    g = ArchGraph((2, 4, 4))
    g.add_blob("input")
    g.add_blob("scale")
    g.add_blob("out", merge="mul")
    g.add_layer("pool", "input", "scale", Pool2d("avg", 4, 4))
    g.add_layer("keep", "input", "out", Identity())
    g.add_layer("s", "scale", "out", Identity(3.0))
    assert g.shapes()["out"] == (2, 4, 4)
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(compile_graph(g)(x), x * 3 * x.mean((2, 3), keepdim=True))
    assert ArchGraph.from_json(g.to_json()).to_json() == g.to_json()
    g.add_blob("half")
    g.add_layer("h", "input", "half", Pool2d("avg", 2, 2))
    g.add_layer("bad", "half", "out", Identity())
    with pytest.raises(GraphError, match=r"'out' multiplies shape \(2, 4, 4\) by layer 'bad' of shape \(2, 2, 2\)"):
        g.validate()


def test_shortcut_a_channel_map_places_channels():
    import torch

    layer = ShortcutA(2, 5, 2, (4, 1))
    g = ArchGraph((2, 4, 4))
    g.add_blob("input")
    g.add_blob("out")
    g.add_layer("sc", "input", "out", layer)
    x = torch.randn(1, 2, 4, 4)
    y = compile_graph(g)(x)
    assert y.shape == (1, 5, 2, 2)
    torch.testing.assert_close(y[:, 4], x[:, 0, ::2, ::2])
    torch.testing.assert_close(y[:, 1], x[:, 1, ::2, ::2])
    assert float(y[:, [0, 2, 3]].abs().sum()) == 0.0
    with pytest.raises(GraphError, match="distinct outputs"):
        ShortcutA(2, 5, 2, (1, 1))


def test_fresh_name_avoids_blobs_and_layers():
    g = small()
    assert g.fresh_name("conv") == "conv_1"
    assert g.fresh_name("new") == "new"


def test_batchnorm_rejects_flat_input():
    g = ArchGraph((4,))
    g.add_blob("input")
    g.add_blob("out")
    g.add_layer("bn", "input", "out", BatchNorm2d(4))
    with pytest.raises(GraphError, match="layer 'bn'"):
        g.validate()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _mutations(data: dict):
    """Replace one value somewhere in a valid architecture with an arbitrary JSON value."""
    return st.tuples(st.integers(0, len(data["layers"]) - 1), st.sampled_from(
        ["name", "src", "dst", "type", "in_channels", "out_channels", "kernel_size", "stride", "padding",
         "bias", "channel_map", "scale", "num_features", "in_features"]), JSON)


BASE = resnet(8, (1, 8, 8)).to_json()


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(BASE))
def test_fuzzed_architecture_json_is_valid_or_graph_error(mutation):
    index, key, value = mutation
    data = json.loads(json.dumps(BASE))
    data["layers"][index][key] = value
    try:
        graph = ArchGraph.from_json(data)
    except GraphError:
        return
    compile_graph(graph)  # anything accepted must compile


@settings(max_examples=40, deadline=None, derandomize=True)
@given(JSON)
def test_arbitrary_json_is_rejected_cleanly(value):
    with pytest.raises(GraphError):
        ArchGraph.from_json(value)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.text(max_size=40))
def test_arbitrary_text_is_rejected_cleanly(text):
    with pytest.raises(GraphError):
        ArchGraph.loads(text)


@pytest.mark.parametrize("name", ["pass", "forward", "training", "1abc", "a.b"])
def test_reserved_or_invalid_layer_names_rejected(name):
    g = small()
    with pytest.raises(GraphError, match="not an identifier or is reserved"):
        g.add_layer(name, "a", "b", Identity())


def test_surgery_keeps_concat_slots_and_copies_are_independent():
    graph = ArchGraph((2, 5, 5))
    for blob in ("input", "a"):
        graph.add_blob(blob)
    graph.add_blob("cat", merge="concat")
    graph.add_layer("c1", "input", "a", Conv2d(2, 3, 3, padding=1))
    graph.add_layer("l", "a", "cat", Identity())
    graph.add_layer("r", "input", "cat", Conv2d(2, 4, 1))
    copy = graph.copy()
    assert copy.to_json() == graph.to_json()

    copy.replace_edge("l", [("l_x", Conv2d(3, 3, 1)), ("l_y", Identity())])
    assert [e.name for e in copy.in_edges("cat")] == ["l_y", "r"]
    copy.insert_after("r", [("r_bn", BatchNorm2d(4))])
    assert [e.name for e in copy.in_edges("cat")] == ["l_y", "r_bn"]
    src, joint = copy.open_edge("l_y")
    assert src == "l_x" and copy.merge(joint) == "add"
    assert [e.name for e in copy.in_edges("cat")] == ["l_y_join", "r_bn"]
    copy.rewire_source("c1", "input", Conv2d(2, 3, 1))
    assert copy.layer("c1").kernel_size == 1 and copy.edge("c1").src == "input"
    assert graph.layer("c1").kernel_size == 3 and [e.name for e in graph.in_edges("cat")] == ["l", "r"]


def test_remove_dead_takes_what_a_removal_leaves_dead_and_keeps_the_function():
    """Cutting a residual branch's first conv takes the rest of the branch (blobs without input),
    keeps the shortcut, and computes what the parent computes with that branch's last BN at zero."""
    g = resnet(8)
    weights = init_weights(g, seed=0)
    pruned = g.copy()
    branch = ["s1b0_1_conv", "s1b0_1_bn", "s1b0_relu1", "s1b0_2_conv", "s1b0_2_bn", "s1b0_residual"]
    assert pruned.remove_dead(["s1b0_1_conv"]) == branch
    pruned.validate()
    assert not {"s1b0_1_conv", "s1b0_1_bn", "s1b0_relu1", "s1b0_2_conv", "s1b0_2_bn"} & set(pruned.blobs())
    assert [e.name for e in pruned.in_edges("s1b0_sum")] == ["s1b0_shortcut"]
    silenced = {**weights, "s1b0_2_bn.weight": torch.zeros(16), "s1b0_2_bn.bias": torch.zeros(16)}
    kept = {k: v for k, v in weights.items() if k.split(".")[0] not in branch}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = compile_graph(g, silenced).eval()(x)
        assert torch.allclose(compile_graph(pruned, kept).eval()(x), expected, atol=1e-6)


def test_remove_dead_refuses_to_cut_input_from_output_and_leaves_the_graph_alone():
    g = resnet(8)
    before = g.to_json()
    with pytest.raises(GraphError, match="no path from the input to the output"):
        g.remove_dead(blobs=["s2b0_sum"])  # everything after it dies, the output too
    with pytest.raises(GraphError, match="no path from the input to the output"):
        g.remove_dead(["stem_conv"])
    assert g.to_json() == before
    g.remove_dead(["s2b0_shortcut"])  # a block without its shortcut is still a network
    assert [e.name for e in g.in_edges("s2b0_sum")] == ["s2b0_residual"]
    assert len(g.to_json()["layers"]) == len(before["layers"]) - 1
