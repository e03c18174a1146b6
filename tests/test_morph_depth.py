"""TYPE-I morphs (eq. 2): deepen (identity and decompose), insert_pact, insert_bn.

The helpers here (random parents with batch-norm statistics calibrated as a trained network's
and outputs checked to depend on the input, the exactness check, the children-must-learn check)
are shared by the other morph test files.
"""

from functools import cache

import pytest
import torch
from reference_nets import assert_sensitive, trained_weights

import morphnas.morph  # noqa: F401  (registers every morph)
from morphnas.errors import MorphError
from morphnas.ir import ArchGraph, Conv2d, GlobalAvgPool, cnn, compile_graph, init_weights, mlp, resnet
from morphnas.modules.kernels import compose
from morphnas.modules.solver import solve_factor
from morphnas.morph import TOLERANCE, MorphResult, apply_morph, verify
from morphnas.morph.depth import Geometry, decompose_factors

NETS = {
    "resnet20": lambda: resnet(20, (3, 16, 16)),
    "resnet20B": lambda: resnet(20, (3, 16, 16), shortcut="B"),
    "resnet56": lambda: resnet(56, (3, 8, 8)),
    "cnn": lambda: cnn((3, 16, 16)),
    "mlp": lambda: mlp((3, 8, 8)),
}
DTYPES = [torch.float32, torch.float64]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


@cache
def parent(net: str, dtype: torch.dtype = torch.float32, plain: bool = False) -> tuple[ArchGraph, dict]:
    """A seed with random weights, unless ``plain`` made a trained network's (``trained_weights``:
    calibrated batch norms, outputs that depend on the input), in ``dtype``."""
    graph = NETS[net]()
    weights = init_weights(graph, seed=1) if plain else trained_weights(graph, seed=1)
    return graph, {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}


def probes(graph: ArchGraph, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    shape = graph.input_shape
    return [torch.randn(3, *shape, generator=gen, dtype=dtype) * 2, torch.ones(2, *shape, dtype=dtype)]


def calibration(graph: ArchGraph, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(8, *graph.input_shape, generator=torch.Generator().manual_seed(3), dtype=dtype)


def morph(name: str, net: str, site: str, params=None, dtype=torch.float32, calibrate=True, plain=False) -> MorphResult:
    """Apply a morph to a cached parent and check the parent was left untouched."""
    graph, weights = parent(net, dtype, plain)
    before_graph, before = graph.to_json(), dict(weights)
    cal = calibration(graph, dtype) if calibrate else None
    res = apply_morph(name, graph, weights, site, params, seed=5, calibration=cal)
    assert graph.to_json() == before_graph
    assert weights.keys() == before.keys() and all(weights[k] is before[k] for k in weights)
    assert set(res.new_weights) <= set(res.weights)
    return res


def assert_exact(res: MorphResult, net: str, dtype: torch.dtype) -> float:
    graph, weights = parent(net, dtype)
    assert res.exact, res.note
    check = verify(graph, weights, res.graph, res.weights, dtype=dtype, inputs=probes(graph, dtype))
    assert check.max_rel_err <= TOLERANCE[dtype], (check, res.note)
    return check.max_rel_err


def assert_learns(res: MorphResult, steps: int = 2) -> None:
    """With weight decay 0, every element of every new parameter gets a non-zero gradient within ``steps``.

    Use a parent with default initialisation (``parent(net, plain=True)``): random BN shifts
    leave some ReLU units dead in the parent itself, and their weights get no gradient either.
    """
    torch.manual_seed(0)
    model = compile_graph(res.graph, {k: v.float() if v.is_floating_point() else v for k, v in res.weights.items()})
    params = dict(model.named_parameters())
    new = [k for k in res.new_weights if k in params]
    assert new, "the morph created no parameters"
    reached = {k: torch.zeros_like(params[k], dtype=torch.bool) for k in new}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.0)
    gen = torch.Generator().manual_seed(11)
    shape = res.graph.input_shape
    for _ in range(steps):
        x = torch.randn(16, *shape, generator=gen)
        out = model.train()(x)
        y = torch.randint(out.shape[1], (16,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out, y).backward()
        for k in new:
            reached[k] |= params[k].grad != 0
        opt.step()
    dead = {k: int((~r).sum()) for k, r in reached.items() if not r.all()}
    assert not dead, f"new parameters without gradient (count of dead elements): {dead}"


def test_the_sensitivity_floor_refuses_a_network_whose_outputs_ignore_its_input():
    """Batch norms with a huge running variance leave the outputs all but constant: a change that
    breaks the function then passes the verifier, and the floor refuses the network."""
    graph, weights = parent("cnn")
    flat = {k: torch.full_like(v, 1e12) if k.endswith("running_var") else v for k, v in weights.items()}
    with pytest.raises(AssertionError, match="barely depend on the input"):
        assert_sensitive(compile_graph(graph, flat).eval(), graph.input_shape)
    assert verify(graph, flat, graph, {**flat, "c2_conv.weight": 1.5 * flat["c2_conv.weight"]}).preserved
    broken = {**weights, "c2_conv.weight": 1.5 * weights["c2_conv.weight"]}  # calibrated: the same change is seen
    assert verify(graph, weights, graph, broken).max_rel_err > 1e-2


# the algebra of eq. 2 --------------------------------------------------------------------------
def test_compose_matches_stacked_convs_away_from_borders():
    gen = torch.Generator().manual_seed(0)
    f1 = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    f2 = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    stacked = torch.conv2d(torch.conv2d(x, f1), f2)  # valid convs: no padding, no borders
    torch.testing.assert_close(stacked, torch.conv2d(x, compose(f2, f1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k1,k2", [(1, 3), (3, 1), (3, 3)])
def test_least_squares_solves_eq2_when_eq3_holds(k1, k2):
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(4, 3, k1 + k2 - 1, k1 + k2 - 1, generator=gen, dtype=torch.float64)
    width = 4 * (k1 + k2 - 1) ** 2  # = C_out K^2 >= C_in K^2: either factor satisfies eq. 3
    f1 = torch.randn(width, 3, k1, k1, generator=gen, dtype=torch.float64)
    f2 = solve_factor(None, f1, target, 4, width, k2)  # eq. 2 solved for F2
    torch.testing.assert_close(compose(f2, f1), target, rtol=1e-10, atol=1e-10)
    f2 = torch.randn(4, width, k2, k2, generator=gen, dtype=torch.float64)
    f1 = solve_factor(f2, None, target, width, 3, k1)  # and for F1
    torch.testing.assert_close(compose(f2, f1), target, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernels", [(1, 1), (1, 3), (3, 1)])
def test_decompose_keeps_the_solved_factor_on_gs_scale(kernels):
    """A well-conditioned random factor: the solved one has G's norm (a square Gaussian gave ~500x)."""
    size = kernels[0] + kernels[1] - 1
    g = torch.randn(64, 64, size, size, dtype=torch.float64)
    geometry = Geometry.of(Conv2d(64, 64, size))
    for seed in range(3):
        f = decompose_factors(g, geometry, kernels, 64, torch.Generator().manual_seed(seed))
        solved = f.f2 if kernels[0] == 1 else f.f1
        assert f.exact and abs(solved.norm() / g.norm() - 1) < 1e-9


# deepen ----------------------------------------------------------------------------------------
DEEPEN_CASES = [
    ("resnet20", "stem_conv", {"init": "identity"}),
    ("resnet20", "s2b0_1_conv", {"init": "identity", "kernels": [3, 3]}),  # stride 2 on F1
    ("resnet20", "s2b0_1_conv", {"init": "identity", "kernels": [1, 5], "carrier": "second"}),  # G grown to 5x5
    ("resnet20", "s3b0_1_conv", {"init": "decompose", "kernels": [3, 1]}),  # stride 2, F2 1x1
    ("resnet20", "s3b0_1_conv", {"init": "decompose", "kernels": [1, 3]}),  # stride 2 on F2
    ("resnet20B", "s2b0_proj_conv", {"init": "decompose", "kernels": [1, 1], "width": 48}),
    ("resnet20", "fc", {"init": "decompose", "activation": "tanh"}),
    ("resnet56", "s3b8_2_conv", {"init": "identity"}),
    ("resnet56", "s2b0_1_conv", {"init": "decompose", "kernels": [1, 3], "batchnorm": False}),
    ("cnn", "c2_conv", {"init": "identity", "kernels": [3, 1]}),
    ("cnn", "c3_conv", {"init": "decompose", "kernels": [3, 1], "activation": None}),
    ("mlp", "fc1", {"init": "identity"}),
    ("mlp", "fc2", {"init": "decompose"}),
    ("mlp", "fc", {"init": "identity", "carrier": "second"}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("net,site,params", DEEPEN_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(DEEPEN_CASES)])
def test_deepen_is_exact(net, site, params, dtype):
    res = morph("deepen", net, site, params, dtype)
    assert_exact(res, net, dtype)
    assert site not in {e.name for e in res.graph.edges()}


def test_deepen_builds_conv_bn_pact_conv_with_bias_and_stride_where_they_belong():
    res = morph("deepen", "resnet20", "s2b0_1_conv", {"init": "identity", "kernels": [3, 3]})
    kinds = [e.layer.type for e in res.graph.edges() if e.name.startswith("s2b0_1_conv_")]
    assert sorted(kinds) == ["batchnorm2d", "conv2d", "conv2d", "pact"]
    first, second = res.graph.layer("s2b0_1_conv_a"), res.graph.layer("s2b0_1_conv_b")
    assert (first.stride, second.stride) == (2, 1) and not first.bias
    lin = morph("deepen", "mlp", "fc1", {"init": "decompose"}).graph
    assert lin.layer("fc1_b").bias and not lin.layer("fc1_a").bias


def test_deepen_without_calibration_is_still_exact_in_eval_mode():
    res = morph("deepen", "cnn", "c1_conv", {"init": "identity"}, torch.float64, calibrate=False)
    assert_exact(res, "cnn", torch.float64)


def test_calibrated_bn_is_the_identity_in_train_mode_on_its_batch():
    """With no BN upstream (train mode changes nothing before it), on the calibration batch itself."""
    graph, weights = parent("mlp", torch.float64)
    cal = calibration(graph, torch.float64)
    res = apply_morph("insert_bn", graph, weights, "fc1", calibration=cal)
    check = verify(graph, weights, res.graph, res.weights, dtype=torch.float64, inputs=[cal])
    assert check.train_max_rel_err < 1e-10
    bare = apply_morph("insert_bn", graph, weights, "fc1")
    assert verify(graph, weights, bare.graph, bare.weights, dtype=torch.float64, inputs=[cal]).train_max_rel_err > 1e-3


def test_decompose_with_two_wide_factors_is_marked_approximate_and_is_not_exact_at_borders():
    graph, weights = parent("cnn", torch.float64)
    res = morph("deepen", "cnn", "c1_conv", {"init": "decompose", "kernels": [3, 3]}, torch.float64)
    assert not res.exact and "borders" in res.note and "holds" in res.note
    check = verify(graph, weights, res.graph, res.weights, dtype=torch.float64, inputs=probes(graph, torch.float64))
    assert check.max_rel_err > 1e-6  # the interior is right (eq. 2 holds); the border pixels are not


def test_decompose_default_width_satisfies_eq3():
    res = morph("deepen", "resnet20", "s1b1_1_conv", {"init": "decompose", "kernels": [1, 3]})
    assert res.graph.layer("s1b1_1_conv_a").out_channels == 16 and res.exact
    wide = morph("deepen", "resnet20", "s1b1_1_conv", {"init": "decompose", "kernels": [3, 3]})
    assert wide.graph.layer("s1b1_1_conv_a").out_channels == 45  # 16 * 9 * 45 >= 16 * 16 * 25
    assert "residual" in wide.note and "eq. 3 holds" in wide.note and not wide.exact


@pytest.mark.parametrize(
    "site,params,match",
    [
        ("nope", {}, "does not apply"),
        ("s1b0_1_bn", {}, "does not apply"),
        ("s1b0_1_conv", {"init": "magic"}, "init must be"),
        ("s1b0_1_conv", {"kernels": [1, 1]}, "cannot hold"),
        ("s1b0_1_conv", {"kernels": [3, 2]}, "odd kernel"),
        ("s1b0_1_conv", {"kernels": [3]}, "two positive integers"),
        ("s1b0_1_conv", {"width": 4}, "decompose' only"),
        ("s1b0_1_conv", {"init": "decompose", "width": 0}, "positive integer"),
        ("s1b0_1_conv", {"carrier": "middle"}, "carrier"),
        ("s1b0_1_conv", {"activation": "swish"}, "unknown activation"),
        ("s1b0_1_conv", {"colour": "red"}, "unknown parameter"),
        ("fc", {"kernels": [3, 3]}, "linear layer"),
    ],
)
def test_deepen_rejects_bad_requests(site, params, match):
    graph, weights = parent("resnet20")
    with pytest.raises(MorphError, match=match):
        apply_morph("deepen", graph, weights, site, params)


# insert_pact / insert_bn -----------------------------------------------------------------------
INSERT_CASES = [
    ("insert_pact", "resnet20", "s1b1_shortcut", {"kind": "relu"}),
    ("insert_pact", "resnet56", "s2b3_2_bn", {"kind": "elu"}),
    ("insert_pact", "cnn", "pool1", {}),
    ("insert_pact", "mlp", "fc1", {"kind": "sigmoid"}),
    ("insert_bn", "resnet20", "s3b0_1_conv", {}),
    ("insert_bn", "resnet56", "fc", {}),
    ("insert_bn", "cnn", "c1_conv", {}),
    ("insert_bn", "mlp", "fc2", {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,net,site,params", INSERT_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in INSERT_CASES])
def test_inserted_layer_is_exact(name, net, site, params, dtype):
    assert_exact(morph(name, net, site, params, dtype), net, dtype)


def concat_net() -> ArchGraph:
    """Two convs with biases concatenated into one blob (order: ia, ib), then pooled."""
    graph = ArchGraph((2, 7, 7))
    for blob in ("input", "a", "b"):
        graph.add_blob(blob)
    graph.add_blob("cat", merge="concat")
    graph.add_blob("out")
    graph.add_layer("ca", "input", "a", Conv2d(2, 3, 3, padding=1))
    graph.add_layer("cb", "input", "b", Conv2d(2, 4, 3, stride=2))  # "valid" padding
    graph.add_layer("ia", "a", "cat", Conv2d(3, 3, 3, stride=2))
    graph.add_layer("ib", "b", "cat", Conv2d(4, 5, 1))
    graph.add_layer("pool", "cat", "out", GlobalAvgPool())
    return graph.validate()


def test_insert_into_concat_blob_keeps_channel_order():
    graph = concat_net()
    weights = trained_weights(graph, seed=2)
    x = [torch.randn(3, 2, 7, 7, dtype=torch.float64)]
    for name in ("insert_bn", "insert_pact", "deepen"):
        res = apply_morph(name, graph, weights, "ia", calibration=x[0].float())
        assert [e.name for e in res.graph.in_edges("cat")][1] == "ib"  # the rewrite kept ia's first slot
        assert verify(graph, weights, res.graph, res.weights, inputs=x).max_rel_err < 1e-6


# children must learn ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,net,site,params",
    [
        ("deepen", "resnet20", "s2b0_1_conv", {"init": "identity"}),
        ("deepen", "cnn", "c2_conv", {"init": "decompose", "kernels": [1, 3]}),
        ("deepen", "mlp", "fc1", {"init": "decompose"}),
        ("insert_pact", "resnet20", "s1b1_2_bn", {}),
        ("insert_bn", "cnn", "c3_conv", {}),
        ("insert_bn", "mlp", "fc", {}),  # before a ReLU, a unit the parent leaves dead stays dead
    ],
)
def test_new_parameters_learn(name, net, site, params):
    assert_learns(morph(name, net, site, params, plain=True))
