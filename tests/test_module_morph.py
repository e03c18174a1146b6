"""morph_module: one conv of a real network becomes a module of Fig. 2, exactly (Theorem 8)."""

import pytest
import torch
from reference_nets import trained_weights
from test_morph_depth import concat_net

from morphnas.errors import MorphError
from morphnas.grammar.rules import RULES
from morphnas.ir import cnn, compile_graph, init_weights, resnet
from morphnas.modules import MODULES, classify, module_to_json
from morphnas.morph import MORPHS, apply_morph, verify


def as_double(weights):
    return {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}


@pytest.fixture(scope="module")
def net():
    graph = resnet(20, (3, 16, 16))
    return graph, trained_weights(graph, 1)


def test_every_rule_names_a_registered_morph():
    assert {rule.morph for rule in RULES.values()} <= set(MORPHS)


def test_paper_classification():
    assert [classify(MODULES[n]) for n in "ABCD"] == ["simple", "simple", "simple", "complex"]


@pytest.mark.parametrize("template", list("ABCD"))
@pytest.mark.parametrize("site", ["stem_conv", "s1b1_2_conv", "s3b2_1_conv"])
def test_module_morph_is_exact_in_float32_and_float64(net, template, site):
    graph, weights = net
    calibration = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    r32 = apply_morph("morph_module", graph, weights, site, {"template": template}, seed=4, calibration=calibration)
    assert r32.exact, r32.note
    assert verify(graph, weights, r32.graph, r32.weights).max_rel_err <= 1e-5
    wd = as_double(weights)
    r64 = apply_morph("morph_module", graph, wd, site, {"template": template}, seed=4,
                      calibration=calibration.double())
    assert verify(graph, wd, r64.graph, r64.weights, dtype=torch.float64).max_rel_err <= 1e-10
    module_edges = MODULES[template].number_of_edges()
    convs = [n for n in r32.new_weights if n.endswith(".weight") and r32.weights[n].dim() == 4]
    assert len(convs) == module_edges


def test_a_conv_into_a_concat_blob_becomes_a_module_in_its_slot():
    graph = concat_net()  # "ib", a 1x1 conv, is the second of two operands of concat blob "cat"
    weights = as_double(trained_weights(graph, 3))
    res = apply_morph("morph_module", graph, weights, "ib", {"template": "B"}, seed=1)
    assert res.exact, res.note
    join = res.graph.in_edges("cat")[1]
    assert join.name == "ib_join" and res.graph.merge(join.src) == "add"  # the module sums, then takes ib's slot
    assert verify(graph, weights, res.graph, res.weights, dtype=torch.float64).max_rel_err <= 1e-10


def test_module_from_json_and_two_wide_convs_on_a_path_is_approximate(net):
    graph, weights = net
    stacked = {"source": "s", "sink": "t", "edges": [
        {"name": "F1", "src": "s", "dst": "a", "kernel": 3}, {"name": "F2", "src": "a", "dst": "t", "kernel": 3}]}
    r = apply_morph("morph_module", graph, weights, "s1b1_1_conv", {"module": stacked}, seed=0)
    assert not r.exact and "borders" in r.note
    ok = apply_morph("morph_module", graph, weights, "s1b1_1_conv", {"module": module_to_json(MODULES["C"])}, seed=0)
    assert ok.exact


def test_bad_requests(net):
    graph, weights = net
    with pytest.raises(MorphError, match="unknown template 'Z'"):
        apply_morph("morph_module", graph, weights, "stem_conv", {"template": "Z"})
    with pytest.raises(MorphError, match="does not apply"):
        apply_morph("morph_module", graph, weights, "s2b0_1_conv", {"template": "A"})  # stride 2
    with pytest.raises(MorphError, match="unknown parameter"):
        apply_morph("morph_module", graph, weights, "stem_conv", {"colour": 1})


def test_every_new_parameter_learns():
    graph = cnn((1, 8, 8), 10)
    weights = init_weights(graph, 0)
    r = apply_morph("morph_module", graph, weights, "c2_conv", {"template": "D"}, seed=1,
                    calibration=torch.randn(16, 1, 8, 8))
    model = compile_graph(r.graph, r.weights).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    params = dict(model.named_parameters())
    for key in r.new_weights:
        if key in params:
            assert not torch.equal(before[key], params[key].detach()), key
