"""The 2017 paper's ResNet morphs (section 4.1), skips, and Table 1's morphed networks."""

import pytest
import torch
from reference_nets import trained_weights
from test_morph_depth import (
    DTYPES,
    assert_exact,
    assert_learns,
    calibration,
    morph,
    parent,
    probes,
)

from morphnas.errors import MorphError
from morphnas.ir import ArchGraph, Conv2d, GlobalAvgPool, Identity, cost, init_weights, resnet
from morphnas.morph import MORPHS, apply_morph, replay, verify
from morphnas.morph.resnet_ops import morph_resnet_variant, variant_shortcuts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting

EXACT_CASES = [
    ("split_identity", "resnet20", "s1b1_shortcut", {}),
    ("split_identity", "resnet56", "s3b5_residual", {}),
    ("identity_to_conv_path", "resnet20", "s1b2_shortcut", {"kernels": [1, 1]}),
    ("identity_to_conv_path", "resnet20", "s2b1_shortcut", {"kernels": [3, 3], "activation": "elu"}),
    ("identity_to_conv_path", "resnet56", "s3b4_shortcut", {"kernels": [3, 1]}),
    ("identity_to_conv_path", "resnet20", "s3b0_residual", {"kernels": [1, 5]}),
    ("add_skip", "resnet20", "s1b0_relu->s2b1_sum", {}),  # 16 -> 32 channels, stride 2
    ("add_skip", "resnet56", "stem_relu->s3b8_2_bn", {}),  # stride 4
    ("add_skip", "cnn", "c1_relu->c3_conv", {}),
    ("add_skip", "mlp", "flatten->fc2", {}),  # a zero linear layer between 1-D blobs
    ("concat_skip", "resnet20", "stem_relu->s1b0_relu1", {}),  # same grid: an identity edge
    ("concat_skip", "resnet56", "s1b3_relu->s2b0_relu1", {}),  # subsampled by a 1x1 max pool
    ("concat_skip", "cnn", "c1_relu->pool2", {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,net,site,params", EXACT_CASES, ids=[f"{c[0]}-{c[2]}" for c in EXACT_CASES])
def test_morph_is_exact(name, net, site, params, dtype):
    assert_exact(morph(name, net, site, params, dtype), net, dtype)


def test_split_identity_halves_the_scale_and_a_half_becomes_a_conv_path():
    graph, weights = parent("resnet20", torch.float64)
    split = apply_morph("split_identity", graph, weights, "s2b2_shortcut")
    halves = [e for e in split.graph.in_edges("s2b2_sum") if e.name.startswith("s2b2_shortcut")]
    assert [h.layer.scale for h in halves] == [0.5, 0.5] and {h.src for h in halves} == {"s2b1_relu"}
    cal = calibration(graph, torch.float64)
    site = halves[0].name
    path = apply_morph("identity_to_conv_path", split.graph, split.weights, site, {"kernels": [3, 3]}, calibration=cal)
    assert torch.equal(path.weights[f"{site}_conv2.weight"][:, :, 1, 1], 0.5 * torch.eye(32, dtype=torch.float64))
    check = verify(graph, weights, path.graph, path.weights, dtype=torch.float64, inputs=probes(graph, torch.float64))
    assert check.preserved


def test_identity_into_a_concat_blob_is_split_through_a_sum_in_its_slot():
    graph = ArchGraph((3, 5, 5))
    for blob in ("input", "a"):
        graph.add_blob(blob)
    graph.add_blob("cat", merge="concat")
    graph.add_blob("out")
    graph.add_layer("id", "input", "cat", Identity(2.0))
    graph.add_layer("conv", "input", "a", Conv2d(3, 4, 3, padding=1))
    graph.add_layer("tail", "a", "cat", Identity())
    graph.add_layer("pool", "cat", "out", GlobalAvgPool())
    weights = {k: v.double() for k, v in trained_weights(graph.validate()).items()}
    x = [torch.randn(2, 3, 5, 5, dtype=torch.float64)]
    for name in ("split_identity", "identity_to_conv_path"):
        res = apply_morph(name, graph, weights, "id", calibration=x[0])
        assert [e.name for e in res.graph.in_edges("cat")][1] == "tail"
        assert verify(graph, weights, res.graph, res.weights, dtype=torch.float64, inputs=x).preserved


def test_concat_skip_appends_channels_read_with_zero_weights():
    res = morph("concat_skip", "resnet20", "s1b0_relu->s2b0_relu1")
    cat = res.graph.edge("s2b0_2_conv").src
    assert res.graph.merge(cat) == "concat"
    assert [e.src for e in res.graph.in_edges(cat)] == ["s2b0_relu1", "s1b0_relu"]
    w = res.weights["s2b0_2_conv.weight"]
    assert w.shape[1] == 32 + 16 and not w[:, 32:].any()
    assert res.new_weights == ["s2b0_2_conv.weight"]


@pytest.mark.parametrize(
    "name,site,match",
    [
        ("add_skip", "s1b0_relu", "SRC->DST"),
        ("add_skip", "nowhere->s1b0_sum", "SRC->DST"),
        ("add_skip", "s2b0_sum->s1b0_sum", "does not come after"),
        ("add_skip", "s3b2_relu->pool", "no 1x1 skip"),  # an image into a vector
        ("concat_skip", "stem_relu->s1b0_1_bn", "read by convolutions only"),
        ("identity_to_conv_path", "s1b0_1_conv", "conv2d layer; expected identity"),
    ],
)
def test_bad_requests_raise(name, site, match):
    graph, weights = parent("resnet20")
    spec = MORPHS[name]
    with pytest.raises(MorphError, match=match):
        spec.fn(graph, weights, site, {}, None)


def test_identity_to_conv_path_rejects_even_kernels():
    graph, weights = parent("resnet20")
    with pytest.raises(MorphError, match="odd"):
        apply_morph("identity_to_conv_path", graph, weights, "s1b1_shortcut", {"kernels": [2, 1]})


@pytest.mark.parametrize(
    "name,net,site,params",
    [
        ("identity_to_conv_path", "resnet20", "s1b1_shortcut", {"kernels": [3, 3]}),
        ("add_skip", "resnet20", "s1b0_relu->s2b1_sum", {}),
        ("add_skip", "mlp", "flatten->fc2", {}),
        ("concat_skip", "cnn", "c1_relu->pool2", {}),
    ],
)
def test_new_parameters_learn(name, net, site, params):
    assert_learns(morph(name, net, site, params, plain=True))


# Table 1's networks ----------------------------------------------------------------------------
def test_variant_blocks_follow_section_4_1():
    g20, g56 = resnet(20), resnet(56)
    assert variant_shortcuts(g20, half=False) == [f"s{s}b{b}_shortcut" for s in (1, 2, 3) for b in (1, 2)]
    assert variant_shortcuts(g56, half=True) == [f"s{s}b{b}_shortcut" for s in (1, 2, 3) for b in (1, 3, 5, 7)]


@pytest.mark.parametrize("variant,paths", [("1c1", 1), ("3c1_2branch", 2)])
def test_variant_structure(variant, paths):
    graph, weights = parent("resnet20")
    seq = morph_resnet_variant(graph, weights, variant)
    into = [e for e in seq.graph.in_edges("s2b1_sum")]
    assert len(into) == 3  # residual + two halves of the shortcut
    convs = [e for e in seq.graph.edges() if e.name.startswith("s2b1_shortcut_h") and e.name.endswith("_conv1")]
    assert len(convs) == paths and all(c.layer.kernel_size == int(variant[0]) for c in convs)
    assert not any(e.name.startswith("s2b0_shortcut_h") for e in seq.graph.edges())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_variant_is_exact_and_replays(dtype):
    graph, weights = parent("resnet20", dtype)
    cal = calibration(graph, dtype)
    seq = morph_resnet_variant(graph, weights, "3c3_2branch_half", calibration=cal, seed=3)
    assert seq.exact and len(seq.records) == 3 * 3  # stage-wise block 1 only: split + two paths each
    check = verify(graph, weights, seq.graph, seq.weights, dtype=dtype, inputs=probes(graph, dtype))
    assert check.preserved, check
    again = replay(graph, weights, seq.records, calibration=cal)
    assert again.graph.to_json() == seq.graph.to_json()
    assert all(torch.equal(again.weights[k], v) for k, v in seq.weights.items())


@pytest.mark.parametrize("variant", ["2c1", "1c1_half_half", "1c1_3branch", "morph20_1c1", "c1"])
def test_unknown_variants_raise(variant):
    graph, weights = parent("resnet20")
    with pytest.raises(MorphError, match="variant"):
        morph_resnet_variant(graph, weights, variant)


# (MB of stored floats, million MACs) from Table 1 of the 2017 paper
TABLE1 = {
    (20, "1c1"): (1.138, 44.0),
    (20, "3c1"): (1.466, 56.5),
    (20, "3c3"): (1.794, 69.1),
    (20, "1c1_2branch"): (1.227, 47.1),
    (56, "1c1_half"): (3.468, 132.0),
    (56, "1c1"): (3.647, 138.3),
    (110, "1c1_half"): (7.053, 267.3),
    (110, "1c1"): (7.412, 279.9),
}
TABLE1_CASES = [
    pytest.param(depth, variant, shortcut, tol, marks=[pytest.mark.slow] if depth == 110 else [],
                 id=f"morph{depth}_{variant}-{shortcut}")
    for (depth, variant) in TABLE1
    for shortcut, tol in (("A", 0.02), ("B", 0.005))
]


@pytest.mark.parametrize("depth,variant,shortcut,tolerance", TABLE1_CASES)
def test_table1_figures(depth, variant, shortcut, tolerance):
    """Projection shortcuts (the paper's Caffe models) within 0.5 %, option A within 2 %
    (docs/design.md#table-1-of-the-2017-paper)."""
    graph = resnet(depth, shortcut=shortcut)
    seq = morph_resnet_variant(graph, init_weights(graph), variant)
    c = cost(seq.graph)
    mb, macs = TABLE1[depth, variant]
    assert abs(c["size_mb"] - mb) / mb <= tolerance
    assert abs(c["macs"] / 1e6 - macs) / macs <= tolerance
