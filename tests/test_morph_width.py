"""The width morph: exact on every stage of a ResNet, the CNN, the MLP and a concat graph."""

import pytest
import torch
from reference_nets import trained_weights

from morphnas.errors import MorphError
from morphnas.ir import (
    Activation,
    ArchGraph,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Identity,
    Linear,
    ShortcutA,
    cnn,
    compile_graph,
    mlp,
    resnet,
)
from morphnas.morph import MORPHS, MorphContext, apply_morph, verify
from morphnas.morph.tied import channel_groups
from morphnas.morph.width import widen

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


def assert_exact(parent, weights, result) -> None:
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        check = verify(parent, weights, result.graph, result.weights, dtype=dtype)
        # batch norm works per channel, so widening is exact with batch statistics too
        assert check.max_rel_err <= tol and check.train_max_rel_err <= tol, (dtype, check)


def seeded(graph, seed: int = 1):
    return graph, trained_weights(graph, seed)


RESNET_SITES = [
    "stem_relu",  # stage 1 sums: grows stages 2 and 3 through the option-A shortcuts
    "s1b1_relu1",  # inside a block of stage 1
    "s1b2_sum",
    "s2b0_relu1",  # inside the block that opens stage 2 (stride 2)
    "s2b2_sum",  # stage 2 sums: grows stage 3
    "s3b1_relu1",
    "s3b0_sum",  # stage 3 sums: the classifier's inputs grow
    "pool",
]


@pytest.mark.parametrize(
    "site,shortcut", [(site, "A") for site in RESNET_SITES] + [("stem_relu", "B"), ("s2b2_sum", "B")]
)
def test_widen_every_stage_of_resnet20_is_exact(site, shortcut):
    graph, weights = seeded(resnet(20, (3, 16, 16), shortcut=shortcut))  # stages at 16, 8 and 4 pixels
    width = graph.shapes()[site][0]
    result = apply_morph("widen", graph, weights, site, {"channels": width + 5}, seed=3)
    assert result.graph.shapes()[site][0] == width + 5
    assert_exact(graph, weights, result)


def test_widening_the_stem_grows_later_stages_through_the_channel_map():
    graph, weights = seeded(resnet(20, (3, 16, 16)))
    result = apply_morph("widen", graph, weights, "stem_relu", {"channels": 21}, seed=0)
    shapes = result.graph.shapes()
    assert [shapes[b][0] for b in ("s1b1_sum", "s2b1_sum", "s3b1_sum", "pool", "s2b1_relu1")] == [21, 37, 69, 69, 32]
    s2 = result.graph.layer("s2b0_shortcut")
    assert s2.channel_map == (*range(8, 24), *range(32, 37))  # old inputs stay put, new ones at the end
    assert result.graph.layer("s3b0_shortcut").channel_map == (*range(16, 48), *range(64, 69))
    assert result.graph.layer("fc").in_features == 69
    assert torch.count_nonzero(result.weights["fc.weight"][:, 64:]) == 0
    assert_exact(graph, weights, result)


def test_widening_stage_two_then_stage_one_keeps_the_map_explicit():
    graph, weights = seeded(resnet(20, (3, 16, 16)))
    first = apply_morph("widen", graph, weights, "s2b1_sum", {"channels": 40}, seed=0)
    assert first.graph.layer("s2b0_shortcut").channel_map == tuple(range(8, 24))  # no input grew
    second = apply_morph("widen", first.graph, first.weights, "s1b0_sum", {"factor": 1.5}, seed=1)
    shortcut = second.graph.layer("s2b0_shortcut")
    assert (shortcut.in_channels, shortcut.out_channels) == (24, 48)
    assert shortcut.channel_map == (*range(8, 24), *range(40, 48))
    assert_exact(graph, weights, second)


@pytest.mark.parametrize("seed_net", [cnn, mlp], ids=["cnn", "mlp"])
def test_widen_every_site_of_cnn_and_mlp_is_exact(seed_net):
    graph, weights = seeded(seed_net((1, 12, 12), 10))
    sites = MORPHS["widen"].sites(graph)
    groups = [g for g in channel_groups(graph) if g.blobs[0] in sites]
    assert sites == [blob for g in groups for blob in g.blobs]  # not the input, its flattening or the logits
    assert len(groups) == (3 if seed_net is cnn else 2)
    for site in (g.blobs[-1] for g in groups):  # all blobs of a group widen alike
        result = apply_morph("widen", graph, weights, site, None, seed=2)  # default: 1.25x
        assert result.graph.shapes()[site][0] > graph.shapes()[site][0]
        assert_exact(graph, weights, result)


def concat_graph() -> ArchGraph:
    """input -> [conv a -> BN -> ReLU | conv b | option-A shortcut] -> concat -> depthwise -> flatten -> MLP."""
    g = ArchGraph((3, 6, 6))
    for blob in ("input", "a", "a_bn", "b", "cat", "dw", "flat", "hidden", "out"):
        g.add_blob(blob, merge="concat" if blob == "cat" else "add")
    g.add_layer("conv_a", "input", "a", Conv2d(3, 4, 3, padding=1))
    g.add_layer("bn_a", "a", "a_bn", BatchNorm2d(4))
    g.add_layer("cat_a", "a_bn", "cat", Activation("relu"))
    g.add_layer("cat_b", "b", "cat", Identity())
    g.add_layer("conv_b", "input", "b", Conv2d(3, 5, 1))
    g.add_layer("cat_s", "input", "cat", ShortcutA(3, 4, 1, (0, 1, 2)))
    g.add_layer("depthwise", "cat", "dw", Conv2d(13, 13, 3, padding=1, groups=13))
    g.add_layer("flatten", "dw", "flat", Flatten())
    g.add_layer("fc1", "flat", "hidden", Linear(13 * 36, 7))
    g.add_layer("fc", "hidden", "out", Linear(7, 3))
    return g.validate()


def test_widening_a_concat_input_inserts_at_its_offset():
    graph, weights = seeded(concat_graph())
    result = apply_morph("widen", graph, weights, "a", {"channels": 6}, seed=0)
    assert result.graph.shapes()["cat"] == (15, 6, 6)
    dw_old, dw_new = weights["depthwise.weight"], result.weights["depthwise.weight"]
    torch.testing.assert_close(dw_new[:4], dw_old[:4])
    torch.testing.assert_close(dw_new[6:], dw_old[4:])  # b's and the shortcut's channels moved by 2
    fc1 = result.weights["fc1.weight"]
    assert fc1.shape == (7, 15 * 36)
    assert torch.count_nonzero(fc1[:, 4 * 36:6 * 36]) == 0  # the new channels' features, mid-vector
    torch.testing.assert_close(fc1[:, 6 * 36:], weights["fc1.weight"][:, 4 * 36:])
    assert result.graph.layer("cat_s").channel_map == (0, 1, 2)
    assert_exact(graph, weights, result)


@pytest.mark.parametrize("site,grown", [("b", "conv_b"), ("cat", "cat_s"), ("dw", "cat_s"), ("hidden", "fc1")])
def test_widening_other_concat_sites_is_exact(site, grown):
    graph, weights = seeded(concat_graph())
    width = graph.shapes()[site][0]
    result = apply_morph("widen", graph, weights, site, {"channels": width + 3}, seed=0)
    assert result.graph.shapes()[site][0] == width + 3
    assert any(key.startswith(grown) for key in result.new_weights) or grown == "cat_s"
    if grown == "cat_s":  # widening the concat grows its last input: a shortcut writing zeros
        assert result.graph.layer("cat_s") == ShortcutA(3, 7, 1, (0, 1, 2))
    assert_exact(graph, weights, result)


def test_sites_exclude_input_output_and_flattened_blobs():
    sites = MORPHS["widen"].sites(concat_graph())
    assert sorted(sites) == ["a", "a_bn", "b", "cat", "dw", "hidden"]  # "flat" has no channels of its own


def test_channel_groups_of_the_concat_graph():
    groups = {g.blobs: g for g in channel_groups(concat_graph())}
    cat = groups[("cat", "dw")]
    assert cat.width == 13 and cat.passthrough == ("depthwise",) and cat.consumers == ()
    assert cat.links_in == ("cat_a", "cat_b", "cat_s") and cat.links_out == ("flatten",)
    assert groups[("a", "a_bn")].producers == ("conv_a",)
    assert groups[("input",)].frozen and groups[("out",)].frozen and not cat.frozen


def grouped_graph() -> ArchGraph:
    g = ArchGraph((4, 5, 5))
    for blob in ("input", "a", "b", "pool", "out"):
        g.add_blob(blob)
    g.add_layer("conv", "input", "a", Conv2d(4, 8, 1))
    g.add_layer("grouped", "a", "b", Conv2d(8, 8, 3, padding=1, groups=2))
    g.add_layer("gap", "b", "pool", GlobalAvgPool())
    g.add_layer("fc", "pool", "out", Linear(8, 2))
    return g.validate()


def test_grouped_convolutions_refuse_clearly():
    graph, weights = seeded(grouped_graph())
    assert MORPHS["widen"].sites(graph) == []
    ctx = MorphContext(torch.Generator().manual_seed(0))
    with pytest.raises(MorphError, match="grouped conv"):
        widen(graph, weights, "a", {"channels": 10}, ctx)


def test_ties_that_feed_back_raise_instead_of_looping():
    """b = shortcut(a) + cat(conv(x), relu(a)): every new channel of a needs one of b, which needs one of a."""
    g = ArchGraph((3, 4, 4))
    for blob in ("input", "a", "c", "b", "pool", "out"):
        g.add_blob(blob, merge="concat" if blob == "c" else "add")
    g.add_layer("conv_a", "input", "a", Conv2d(3, 4, 1))
    g.add_layer("conv_c", "input", "c", Conv2d(3, 2, 1))
    g.add_layer("relu_a", "a", "c", Activation("relu"))
    g.add_layer("shortcut", "a", "b", ShortcutA(4, 6, 1, (2, 3, 4, 5)))
    g.add_layer("keep", "c", "b", Identity())
    g.add_layer("gap", "b", "pool", GlobalAvgPool())
    g.add_layer("fc", "pool", "out", Linear(6, 2))
    graph, weights = seeded(g.validate())
    assert MORPHS["widen"].sites(graph) == []
    with pytest.raises(MorphError, match="does not terminate"):
        widen(graph, weights, "a", {"channels": 5}, MorphContext(torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    "site,params,match",
    [
        ("s1b0_relu1", {"channels": 12}, "from 16 to 12"),
        ("s1b0_relu1", {"channels": 16}, "only adds"),
        ("s1b0_relu1", {"factor": 0.5}, "above 1"),
        ("s1b0_relu1", {"channels": 20, "factor": 2}, "one of"),
        ("nowhere", {"channels": 20}, "no blob named 'nowhere'"),
        ("input", {"channels": 5}, "network input"),
        ("fc", {"channels": 12}, "network output"),
    ],
)
def test_bad_requests_raise_morph_error(site, params, match):
    graph, weights = seeded(resnet(20))
    with pytest.raises(MorphError, match=match):
        widen(graph, weights, site, params, MorphContext(torch.Generator().manual_seed(0)))


def test_apply_morph_rejects_unknown_blob():
    graph, weights = seeded(resnet(20))
    with pytest.raises(MorphError, match="does not apply"):
        apply_morph("widen", graph, weights, "nowhere", {"channels": 20})


def test_widen_is_pure_and_seeded():
    graph, weights = seeded(resnet(20, (3, 16, 16)))
    before_json, before = graph.to_json(), {k: v.clone() for k, v in weights.items()}
    a = apply_morph("widen", graph, weights, "s2b0_sum", {"channels": 40}, seed=5)
    b = apply_morph("widen", graph, weights, "s2b0_sum", {"channels": 40}, seed=5)
    assert graph.to_json() == before_json
    assert all(torch.equal(weights[k], before[k]) for k in before)
    assert a.graph.to_json() == b.graph.to_json() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert set(a.new_weights) == {k for k in a.weights if a.weights[k].shape != weights[k].shape}


def test_exactness_survives_a_training_forward_pass():
    """New BN channels start at mean 0, var 1; after batch-statistics updates the child is still exact."""
    graph, weights = seeded(resnet(20, (3, 16, 16)))
    result = apply_morph("widen", graph, weights, "s1b1_sum", {"channels": 24}, seed=0)
    batch = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    states = []
    for g, w in ((graph, weights), (result.graph, result.weights)):
        model = compile_graph(g, w).train()
        with torch.no_grad():
            model(batch)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert not torch.equal(states[1]["s1b1_2_bn.running_var"][16:], torch.ones(8))  # the stats did move
    check = verify(graph, states[0], result.graph, states[1])
    assert check.max_rel_err <= 1e-5


def _new_slices(old: torch.Tensor, new: torch.Tensor) -> list[tuple[int, int]]:
    """(dim, index) of every appended row / column."""
    return [(d, i) for d in range(new.dim()) for i in range(old.shape[d], new.shape[d])]


@pytest.mark.parametrize(
    "net,site,shape",
    [("resnet20", "s1b1_sum", (3, 16, 16)), ("resnet20", "s2b1_relu1", (3, 16, 16)), ("mlp", "fc1_relu", (1, 8, 8))],
)
def test_new_parameters_get_gradients_within_two_steps(net, site, shape):
    graph = resnet(20, shape) if net == "resnet20" else mlp(shape)
    graph, weights = seeded(graph)
    result = apply_morph("widen", graph, weights, site, None, seed=0)
    model = compile_graph(result.graph, result.weights).train()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, *shape, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    seen = {k: torch.zeros_like(p) for k, p in params.items()}
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for k, p in params.items():
            seen[k] += p.grad.abs()
        opt.step()
    checked = 0
    for key in result.new_weights:
        if key not in params:
            continue  # running statistics
        for dim, index in _new_slices(weights[key], result.weights[key]):
            assert seen[key].select(dim, index).sum() > 0, (key, dim, index)
            checked += 1
    assert checked > 0
