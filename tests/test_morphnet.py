"""MorphNet: cost weights, the gamma regulariser, shrink (morph and whole network), expand, rules."""

import math

import pytest
import torch
from reference_nets import trained_weights
from test_morph_width import concat_graph

from morphnas.errors import ConfigError, MorphError
from morphnas.ir import cnn, compile_graph, cost, init_weights, mlp, resnet
from morphnas.morph import MORPHS, apply_morph, verify
from morphnas.morphnet import (
    ChannelMap,
    channel_costs,
    expand_to_budget,
    layer_widths,
    parse_budget,
    regulariser,
    scale_network,
    select_dead,
    shrink,
    train_regularised,
)
from morphnas.train import TrainConfig, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


def small_resnet(shortcut: str = "A"):
    return resnet(8, (1, 16, 16), 10, shortcut=shortcut)  # stages at 16, 8 and 4 pixels


def seeded(graph, seed: int = 1):
    return graph, trained_weights(graph, seed)


# cost weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [small_resnet, lambda: small_resnet("B"), lambda: cnn((1, 16, 16)),
                                  lambda: mlp((1, 8, 8)), concat_graph])
def test_channel_cost_model_adds_up_to_the_network_cost(make):
    graph = make()
    cmap, measured = ChannelMap(graph), cost(graph)
    assert cmap.total_cost("macs") == measured["macs"]
    assert cmap.total_cost("params") == measured["params"]
    # the weights are the derivatives: dropping one channel of a plain chain costs its weight
    alive = torch.ones(cmap.n_nodes, dtype=torch.float64)
    group = cmap.prunable_groups()[0]
    alive[cmap.nodes(group)[0]] = 0
    weight = cmap.node_costs("macs")[cmap.nodes(group)[0]]
    assert cmap.total_cost("macs") - cmap.total_cost("macs", alive) == pytest.approx(float(weight))


def test_mac_weights_favour_removing_early_channels_and_param_weights_late_ones():
    macs, params = channel_costs(small_resnet(), "macs"), channel_costs(small_resnet(), "params")
    inner = ["s1b0_1_conv", "s2b0_1_conv", "s3b0_1_conv"]  # block-inner groups, stage 1 to 3
    assert [macs[g] for g in inner] == sorted((macs[g] for g in inner), reverse=True)
    assert [params[g] for g in inner] == sorted(params[g] for g in inner)
    # one stage-1 channel: 9 * 16 * 256 MACs as an output of s1b0_1_conv, as much again as an input of s1b0_2_conv
    assert macs["s1b0_1_conv"] == 2 * 9 * 16 * 256
    assert params["s1b0_1_conv"] == 2 * 9 * 16 + 2  # + its BN's gamma and beta
    assert macs["s1b0_1_conv"] / macs["s3b0_1_conv"] > 4 and params["s3b0_1_conv"] / params["s1b0_1_conv"] > 2


def test_regulariser_value_and_gradient_follow_the_cost_weights():
    graph, weights = small_resnet(), init_weights(small_resnet())
    model = compile_graph(graph, weights)
    reg = regulariser(graph, "macs", strength=3.0)
    value = reg(model)
    charged = reg.map.unit_costs("macs")[reg.charged].sum()  # every gamma is 1 at initialisation
    assert value.item() == pytest.approx(3.0 * float(charged) / cost(graph)["macs"], rel=1e-6)
    assert 2 * 3.0 * 0.9 < value.item() < 2 * 3.0 * 1.01  # each conv charged through its inputs and outputs
    value.backward()
    grad = model.get_submodule("s1b0_1_bn").weight.grad
    expected = 3.0 * channel_costs(graph)["s1b0_1_conv"] / cost(graph)["macs"]
    torch.testing.assert_close(grad, torch.full_like(grad, expected))
    assert model.get_submodule("fc").weight.grad is None  # the logits are never charged


def test_regulariser_uses_max_over_tied_bns_and_updates_alive_counts():
    graph, weights = small_resnet(), init_weights(small_resnet())
    weights["stem_bn.weight"] = torch.full((16,), 0.5)
    weights["s1b0_2_bn.weight"] = torch.full((16,), 0.25)  # the stage-1 stream: max is stem_bn's 0.5
    reg = regulariser(graph, "macs", aggregate="max")
    model = compile_graph(graph, weights)
    reg(model).backward()
    assert torch.count_nonzero(model.get_submodule("s1b0_2_bn").weight.grad) == 0
    assert torch.count_nonzero(model.get_submodule("stem_bn").weight.grad) == 16
    summed = regulariser(graph, "macs", aggregate="sum")
    model = compile_graph(graph, weights)
    summed(model).backward()
    assert torch.count_nonzero(model.get_submodule("s1b0_2_bn").weight.grad) == 16
    # killing half of stage-1's inner channels makes its neighbours cheaper (MorphNet's alive counts)
    weights["s1b0_1_bn.weight"][:8] = 0
    scores = reg.map.scores(weights)
    dynamic, static = reg.unit_costs(scores), reg.unit_costs(None)
    stream = reg.map.unit_of[reg.map.nodes(reg.map.group_of["stem_conv"])]
    assert torch.all(dynamic[stream] < static[stream])


def test_regularisers_shrink_early_layers_for_macs_and_late_layers_for_params():
    """A short regularised training on a small ResNet removes channels where the target says."""
    data = load_dataset("synthetic", synthetic_shape=(1, 16, 16), synthetic_size=700)
    graph = small_resnet()
    removed = {}
    for target in ("macs", "params"):
        model = compile_graph(graph, init_weights(graph, seed=0))
        config = TrainConfig(epochs=6, lr=0.1, batch_size=32, seed=0)
        run = train_regularised(model, data, config, regulariser(graph, target, strength=4.0))
        assert run.penalties[-1] < run.penalties[0]
        result = shrink(graph, {k: v.detach() for k, v in model.state_dict().items()}, threshold=1e-2)
        counts = result.removal.removed_channels
        removed[target] = {stage: sum(counts.get(g, 0) for g in groups) / width for stage, groups, width in [
            ("early", ("stem_conv", "s1b0_1_conv"), 32),
            ("late", ("s3b0_1_conv", "s3b0_2_conv"), 128),
        ]}
        compile_graph(result.graph, result.weights)  # still a network
    assert removed["macs"]["early"] > removed["macs"]["late"]
    assert removed["params"]["late"] > removed["params"]["early"]
    assert removed["macs"]["early"] > removed["params"]["early"]
    assert removed["params"]["late"] > removed["macs"]["late"]


# shrink ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [small_resnet, lambda: small_resnet("B"), lambda: cnn((1, 16, 16)),
                                  lambda: mlp((1, 8, 8)), concat_graph])
def test_shrink_morph_removes_channels_everywhere_and_reports_its_error(make):
    graph, weights = seeded(make())
    sites = MORPHS["shrink"].sites(graph)
    assert sites
    calibration = torch.randn(16, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    for site in sites:
        result = apply_morph("shrink", graph, weights, site, {"fraction": 0.5}, calibration=calibration)
        assert not result.exact
        assert result.graph.shapes()[site][0] < graph.shapes()[site][0]  # the site's group lost channels
        assert result.graph.shapes()[site][0] >= 1
        compile_graph(result.graph, result.weights)  # strict load: every tensor fits its new layer
        check = verify(graph, weights, result.graph, result.weights, inputs=[calibration])
        assert f"eval {check.max_rel_err:.3g}" in result.note and "preservation error" in result.note
        assert cost(result.graph)["params"] < cost(graph)["params"]


def test_shrink_works_on_weights_whose_first_entry_is_a_batch_norm_counter():
    """A checkpoint's keys come sorted, so an int64 ``num_batches_tracked`` may come first."""
    graph, weights = seeded(small_resnet())
    counters = sorted(k for k in weights if k.endswith("num_batches_tracked"))
    assert counters and weights[counters[0]].dtype == torch.int64
    reordered = {counters[0]: weights[counters[0]], **weights}
    site = MORPHS["shrink"].sites(graph)[0]
    calibration = torch.randn(16, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    expected = apply_morph("shrink", graph, weights, site, {"fraction": 0.5}, calibration=calibration)
    result = apply_morph("shrink", graph, reordered, site, {"fraction": 0.5}, calibration=calibration)
    assert result.graph.shapes() == expected.graph.shapes()


def test_shrink_params_are_checked():
    graph, weights = seeded(cnn((1, 8, 8)))
    for params in ({}, {"fraction": 0.2, "threshold": 0.1}, {"fraction": 1.0}, {"fraction": -1}, {"ratio": 2},
                   {"threshold": 0.1, "aggregate": "mean"}):
        with pytest.raises(MorphError):
            apply_morph("shrink", graph, weights, "c1_conv", params)
    result = apply_morph("shrink", graph, weights, "c1_conv", {"fraction": 0.99})
    assert result.graph.shapes()["c1_conv"][0] == 1  # never the whole group


def zero_channels(weights, bns, channels, beta: bool = True):
    for bn in bns:
        weights[f"{bn}.weight"][channels] = 0.0
        if beta:
            weights[f"{bn}.bias"][channels] = 0.0
            weights[f"{bn}.running_mean"][channels] = 0.0


def test_removing_dead_channels_is_exact_and_follows_the_option_a_channel_map():
    graph, weights = seeded(small_resnet())
    stage1 = ["stem_bn", "s1b0_2_bn"]
    stage2 = ["s2b0_2_bn"]
    source = [1, 2]  # stage-1 stream channels; the option-A shortcut puts them at 8 + i in stage 2
    targets = [graph.layer("s2b0_shortcut").channel_map[i] for i in source]
    zero_channels(weights, stage2, targets + [0, 31])  # 0 and 31 are padding channels, free to go
    cmap = ChannelMap(graph)
    dead = select_dead(cmap, cmap.scores(weights), 1e-3)
    stream2 = cmap.unit_of[cmap.nodes(cmap.group_of["s2b0_sum"])].tolist()
    assert {stream2[0], stream2[31]} <= dead and not {stream2[t] for t in targets} & dead  # sources alive
    zero_channels(weights, stage1, source)
    result = shrink(graph, weights, threshold=1e-3)
    assert result.removal.removed_channels == {"stem_conv": 2, "s2b0_2_conv": 4}
    shortcut = result.graph.layer("s2b0_shortcut")
    assert (shortcut.in_channels, shortcut.out_channels) == (14, 28)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        check = verify(graph, weights, result.graph, result.weights, dtype=dtype)
        assert check.max_rel_err <= tol, check
    assert result.verification.max_rel_err <= 1e-5


def test_option_a_map_keeps_old_channels_in_place():
    graph, weights = seeded(small_resnet())
    zero_channels(weights, ["stem_bn", "s1b0_2_bn"], [0])
    zero_channels(weights, ["s2b0_2_bn"], [graph.layer("s2b0_shortcut").channel_map[0]])
    result = shrink(graph, weights, threshold=1e-3)
    old = graph.layer("s2b0_shortcut").channel_map  # (8, ..., 23): centred
    new = result.graph.layer("s2b0_shortcut").channel_map
    assert new == tuple(j - 1 for j in old[1:])  # one output channel before them went
    assert verify(graph, weights, result.graph, result.weights).max_rel_err <= 1e-5


def test_a_dead_residual_branch_goes_and_its_shortcut_stays():
    graph, weights = seeded(resnet(14, (1, 16, 16)))  # two blocks per stage
    zero_channels(weights, ["s1b1_1_bn"], list(range(16)))
    weights["s1b1_2_bn.bias"].zero_()  # the branch adds bn2(0) = beta - gamma * mean / sigma: make it 0
    weights["s1b1_2_bn.running_mean"].zero_()
    result = shrink(graph, weights, threshold=1e-3, calibration=torch.randn(8, 1, 16, 16))
    names = {e.name for e in result.graph.edges()}
    gone = {"s1b1_1_conv", "s1b1_1_bn", "s1b1_relu1", "s1b1_2_conv", "s1b1_2_bn", "s1b1_residual"}
    assert set(result.removal.removed_layers) == gone and not gone & names
    assert {"s1b1_shortcut", "s1b1_relu", "s1b0_1_conv"} <= names
    assert cost(result.graph)["macs"] < cost(graph)["macs"]
    assert verify(graph, weights, result.graph, result.weights).max_rel_err <= 1e-5


def test_a_group_whose_removal_cuts_the_network_keeps_one_channel():
    graph, weights = seeded(cnn((1, 8, 8)))
    zero_channels(weights, ["c2_bn"], list(range(32)))
    result = shrink(graph, weights, threshold=1e-3)
    assert result.graph.shapes()["c2_conv"][0] == 1 and result.removal.kept_back == ["c2_conv"]
    assert "keep the network connected" in result.note
    compile_graph(result.graph, result.weights)


@pytest.mark.xfail(strict=True, reason="with trained-like weights (calibrated batch norms) folding leaves 0.244 of "
                   "the plain shrink's 0.771, above the 0.2 asked, and c3_bn's outputs differ inside the map too, "
                   "not only at the borders (as with the old random statistics: 0.61 of 1.98) (#31)")
def test_compensation_folds_dead_channels_constant_output_into_the_next_bn():
    graph, weights = seeded(cnn((1, 16, 16)))
    zero_channels(weights, ["c2_bn"], list(range(0, 32, 2)), beta=False)
    weights["c2_bn.bias"][0:32:2] = 1.0  # dead channels output relu(beta) = 1 everywhere
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = shrink(graph, weights, threshold=1e-3)
    folded = shrink(graph, weights, threshold=1e-3, calibration=x)
    assert folded.removal.compensated == ["c3_conv"]
    assert folded.graph.shapes()["c2_conv"][0] == 16
    errors = [verify(graph, weights, r.graph, r.weights, inputs=[x]).max_rel_err for r in (plain, folded)]
    assert errors[1] < 0.2 * errors[0]  # only the zero-padded borders still differ


# expand ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,site", [(lambda: cnn((1, 16, 16)), "input"), (small_resnet, "input")])
def test_expand_morph_scales_every_width_exactly(make, site):
    graph, weights = seeded(make())
    result = apply_morph("expand", graph, weights, site, {"factor": 1.5}, seed=3)
    assert result.exact
    before, after = layer_widths(graph), layer_widths(result.graph)
    for name, width in before.items():
        if name != "fc":
            assert after[name] == round(1.5 * width), name
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        check = verify(graph, weights, result.graph, result.weights, dtype=dtype)
        assert check.max_rel_err <= tol and check.train_max_rel_err <= tol, (dtype, check)
    with pytest.raises(MorphError):
        apply_morph("expand", graph, weights, site, {"factor": 0.5})
    assert MORPHS["expand"].sites(graph) == ["input"]


def test_expand_leaves_groups_the_widen_morph_refuses_and_stays_exact():
    graph, weights = seeded(small_resnet())
    # a group feeding one concat blob twice: the widen morph currently refuses to grow it
    skip = apply_morph("concat_skip", graph, weights, "s3b0_1_conv->s3b0_relu1", None, seed=0)
    result = apply_morph("expand", skip.graph, skip.weights, "input", {"factor": 1.25}, seed=0)
    assert result.graph.shapes()["s1b0_1_conv"][0] == 20
    if "refused" in result.note:
        assert result.graph.shapes()["s3b0_1_conv"][0] == 64
    assert verify(skip.graph, skip.weights, result.graph, result.weights).max_rel_err <= 1e-5


@pytest.mark.parametrize("relative", [1.8, 0.45])
def test_expand_to_budget_is_the_largest_multiplier_within_budget(relative):
    graph, weights = seeded(small_resnet())
    budget = relative * cost(graph)["macs"]
    result = expand_to_budget(graph, weights, budget, "macs", tolerance=1e-3)
    assert result.cost["macs"] <= budget
    assert (result.factor > 1) == (relative > 1) and result.exact == (relative > 1)
    above = scale_network(graph, weights, result.factor * (1 + 2e-3)).graph  # just past the tolerance
    assert cost(above)["macs"] > budget
    assert result.cost["macs"] > 0.9 * budget
    if relative > 1:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
            assert verify(graph, weights, result.graph, result.weights, dtype=dtype).max_rel_err <= tol
    else:
        assert result.verification is not None and result.verification.max_rel_err > 0


def test_expand_to_budget_on_params_and_impossible_budgets():
    graph, weights = seeded(cnn((1, 8, 8)))
    result = expand_to_budget(graph, weights, 2 * cost(graph)["params"], "params")
    assert cost(graph)["params"] * 1.8 < result.cost["params"] <= 2 * cost(graph)["params"]
    with pytest.raises(ConfigError, match="narrowest"):
        expand_to_budget(graph, weights, 10, "macs")
    with pytest.raises(ConfigError):
        expand_to_budget(graph, weights, 1e6, "flops")


def test_parse_budget():
    assert parse_budget("30000000", 5.0) == 30_000_000
    assert parse_budget("0.5x", 1000.0) == 500.0
    assert parse_budget(" 2e6 ", 1.0) == 2e6
    for bad in ("", "half", "0.5y", "-1", "0x", "x"):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad, 1000.0)


# grammar rules --------------------------------------------------------------------------------
def test_rules_add_shrink_and_expand_to_the_grammar():
    from morphnas.grammar.rules import RULES, Descriptor

    assert RULES["shrink"].params == frozenset({"fraction"}) and RULES["expand"].params == frozenset({"factor"})
    graph, weights = seeded(small_resnet())
    shrunk = RULES["shrink"].apply(graph, weights, Descriptor("shrink", 0.0, {"fraction": 0.5}), seed=0)
    assert shrunk.graph.shapes()["stem_conv"][0] == 8 and not shrunk.exact
    grown = RULES["expand"].apply(graph, weights, Descriptor("expand", 0.7, {"factor": 1.25}), seed=0)
    assert grown.exact and math.isclose(cost(grown.graph)["macs"] / cost(graph)["macs"], 1.5625, rel_tol=0.05)
    with pytest.raises(ValueError):
        RULES["shrink"].check_params({"threshold": 0.1})
