"""TYPE-II branch (eq. 4) and kernel growth (section 3.4)."""

import pytest
import torch
from reference_nets import trained_weights
from test_morph_depth import DTYPES, assert_exact, assert_learns, concat_net, morph, parent

from morphnas.errors import MorphError
from morphnas.ir import init_weights
from morphnas.morph import apply_morph, verify

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting

BRANCH_CASES = [
    ("resnet20", "stem_conv", {}),
    ("resnet20", "s2b0_1_conv", {"kernels": [1, 3]}),  # stride 2; the 3x3 branch carries G's outer taps
    ("resnet20", "s3b0_1_conv", {"kernels": [5, 3]}),  # the 5x5 branch is G̃ - R̃
    ("resnet20B", "s3b0_proj_conv", {"kernels": [3, 1]}),  # 1x1 stride-2 projection, padding 0 -> 1
    ("resnet56", "s2b4_2_conv", {}),
    ("cnn", "c2_conv", {"kernels": [3, 5]}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("net,site,params", BRANCH_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(BRANCH_CASES)])
def test_branch_is_exact(net, site, params, dtype):
    res = morph("branch", net, site, params, dtype)
    assert_exact(res, net, dtype)


def test_branch_adds_two_learnable_nonzero_filters_at_the_add_blob():
    graph, weights = parent("resnet20")
    res = morph("branch", "resnet20", "s1b1_1_conv", {"kernels": [1, 3]})
    b1, b2 = (e for e in res.graph.edges() if e.name.startswith("s1b1_1_conv_b"))
    assert (b1.src, b1.dst) == (b2.src, b2.dst) == ("s1b0_relu", "s1b1_1_conv")  # split at source, add at sink
    f1, f2 = res.weights[f"{b1.name}.weight"], res.weights[f"{b2.name}.weight"]
    assert f1.shape[-1] == 1 and f2.shape[-1] == 3 and f1.abs().min() > 0
    g = weights["s1b1_1_conv.weight"]
    torch.testing.assert_close(f2[:, :, 1:2, 1:2] + f1, g[:, :, 1:2, 1:2])  # eq. 4 at the centre tap
    torch.testing.assert_close(f2[:, :, 0], g[:, :, 0])  # the outer taps are all in the 3x3 branch
    assert not torch.allclose(f2, g / 2, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_branch_into_a_concat_blob_sums_first_and_keeps_its_slot_and_bias(dtype):
    graph = concat_net()
    weights = {k: v.to(dtype) for k, v in trained_weights(graph, seed=4).items()}
    res = apply_morph("branch", graph, weights, "ia", {"kernels": [3, 5]}, seed=1)
    assert [e.name for e in res.graph.in_edges("cat")][1] == "ib"
    assert res.weights["ia_b1.bias"].abs().min() > 0 and res.weights["ia_b2.bias"].abs().min() > 0
    x = [torch.randn(4, 2, 7, 7, dtype=dtype), torch.ones(2, 2, 7, 7, dtype=dtype)]
    assert verify(graph, weights, res.graph, res.weights, dtype=dtype, inputs=x).preserved


@pytest.mark.parametrize(
    "net,site,params,match",
    [
        ("resnet20", "s1b0_1_conv", {"kernels": [1, 1]}, "must hold G's 3x3"),
        ("resnet20", "s1b0_1_conv", {"kernels": [2, 3]}, "odd number"),
        ("resnet20", "s1b0_1_bn", {}, "does not apply"),
        ("resnet20", "s1b0_1_conv", {"kernel": 3}, "unknown parameter"),
    ],
)
def test_branch_rejects_bad_requests(net, site, params, match):
    graph, weights = parent(net)
    with pytest.raises(MorphError, match=match):
        apply_morph("branch", graph, weights, site, params)


def test_branch_cannot_shrink_a_valid_conv():
    graph = concat_net()
    with pytest.raises(MorphError, match="negative padding"):
        apply_morph("branch", graph, init_weights(graph), "cb", {"kernels": [1, 3]})


GROW_CASES = [
    ("resnet20", "stem_conv", {}),
    ("resnet20", "s2b0_1_conv", {"kernel": 7}),  # stride 2
    ("resnet20B", "s2b0_proj_conv", {}),  # 1x1, stride 2, padding 0 -> 3x3 padding 1
    ("resnet56", "s3b8_2_conv", {}),
    ("cnn", "c3_conv", {"kernel": 5}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("net,site,params", GROW_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(GROW_CASES)])
def test_grow_kernel_is_exact(net, site, params, dtype):
    res = morph("grow_kernel", net, site, params, dtype)
    assert_exact(res, net, dtype)
    old, new = parent(net)[0].layer(site), res.graph.layer(site)
    assert new.kernel_size == params.get("kernel", old.kernel_size + 2)
    assert new.stride == old.stride and new.padding - old.padding == (new.kernel_size - old.kernel_size) // 2


def test_grow_kernel_on_valid_conv_with_bias_and_concat():
    graph = concat_net()
    weights = {k: v.double() for k, v in trained_weights(graph, seed=4).items()}
    res = apply_morph("grow_kernel", graph, weights, "cb", {"kernel": 5})
    x = [torch.randn(4, 2, 7, 7, dtype=torch.float64)]
    assert verify(graph, weights, res.graph, res.weights, dtype=torch.float64, inputs=x).preserved


@pytest.mark.parametrize("kernel,match", [(4, "even number"), (3, "above 3"), (True, "integer")])
def test_grow_kernel_rejects_bad_sizes(kernel, match):
    graph, weights = parent("cnn")
    with pytest.raises(MorphError, match=match):
        apply_morph("grow_kernel", graph, weights, "c1_conv", {"kernel": kernel})


@pytest.mark.parametrize(
    "name,net,site,params",
    [
        ("branch", "resnet20", "s2b0_1_conv", {"kernels": [1, 3]}),
        ("branch", "cnn", "c1_conv", {}),
        ("grow_kernel", "resnet20", "s1b2_2_conv", {}),
        ("grow_kernel", "cnn", "c3_conv", {}),
    ],
)
def test_new_parameters_learn(name, net, site, params):
    assert_learns(morph(name, net, site, params, plain=True))
