"""Sites come in program order, so a grammar position keeps its meaning after a morph elsewhere."""

from functools import cache

import networkx as nx
import pytest
import torch

import morphnas.morph  # noqa: F401  (registers every morph)
from morphnas.errors import GraphError
from morphnas.grammar.rules import RULES, Descriptor
from morphnas.ir import ArchGraph, Conv2d, Identity, init_weights, load_arch
from morphnas.morph import apply_morph
from morphnas.morph.base import MORPHS, MorphRecord, MorphResult, MorphSpec, in_program_order
from morphnas.morph.sites import conv_edges

RESNET8_CONVS = [
    "stem_conv",
    "s1b0_1_conv", "s1b0_2_conv",
    "s2b0_1_conv", "s2b0_2_conv",
    "s3b0_1_conv", "s3b0_2_conv",
]


@cache
def seed(name: str = "resnet8", shortcut: str = "A") -> tuple[ArchGraph, dict[str, torch.Tensor]]:
    graph = load_arch(name, (3, 8, 8), 10, shortcut=shortcut)
    return graph, init_weights(graph, 0)


def rebuilt_backwards(graph: ArchGraph) -> ArchGraph:
    """The same network with its blobs and layers added in the reverse order."""
    data = graph.to_json()
    return ArchGraph.from_json({**data, "blobs": data["blobs"][::-1], "layers": data["layers"][::-1]})


def precedes(graph: ArchGraph, a: str, b: str) -> bool:
    """Whether layer ``b`` depends on layer ``a``'s output."""
    return nx.has_path(graph.nx, graph.edge(a).dst, graph.edge(b).src)


def test_resnet8_conv_sites_run_from_input_to_output():
    graph, _ = seed()
    sites = MORPHS["branch"].sites(graph)  # every ungrouped conv
    assert sites == RESNET8_CONVS
    assert graph.edge(sites[0]).src == graph.source == "input"
    assert all(precedes(graph, a, b) for a, b in zip(sites, sites[1:], strict=False))
    assert MORPHS["deepen"].sites(graph) == [*RESNET8_CONVS, "fc"]  # convs, then the classifier


def test_resnet20_projection_shortcut_follows_its_block():
    graph, _ = seed("resnet20", "B")
    sites = MORPHS["grow_kernel"].sites(graph)
    assert len(sites) == 21
    assert sites[:3] == ["stem_conv", "s1b0_1_conv", "s1b0_2_conv"]
    # a block's residual path comes out whole, then its projection, then the next block
    assert sites[7:11] == ["s2b0_1_conv", "s2b0_2_conv", "s2b0_proj_conv", "s2b1_1_conv"]
    assert sites[-1] == "s3b2_2_conv"
    order = graph.program_order()
    for i, a in enumerate(sites):  # no site comes before one it depends on
        assert not any(precedes(graph, b, a) for b in sites[i + 1:]), a
    assert order["input"] == 0 and order["stem_conv"] < order["s1b0_1_conv"] < order["fc"]


def test_program_order_interleaves_each_blob_after_its_in_layers():
    graph, _ = seed()
    order = graph.program_order()
    names = {e.name for e in graph.edges()} | set(graph.blobs())
    assert set(order) == names
    blobs = graph.program_blobs()
    assert blobs[0] == "input" and blobs[-1] == "fc"
    assert sorted(blobs, key=order.__getitem__) == blobs
    # s1b0_sum adds its residual and its shortcut (by layer name), then relu reads it
    assert order["s1b0_2_bn"] < order["s1b0_residual"] < order["s1b0_shortcut"] < order["s1b0_sum"]
    assert order["s1b0_sum"] < order["s1b0_relu"]
    for e in graph.edges():
        if e.dst != e.name:  # a layer named like the blob it makes shares that blob's index
            assert order[e.src] < order[e.name] < order[e.dst], e.name


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_order_does_not_depend_on_insertion_order(shortcut):
    graph, _ = seed("resnet8", shortcut)
    backwards = rebuilt_backwards(graph)
    assert [e.name for e in backwards.edges()] != [e.name for e in graph.edges()]
    assert backwards.program_blobs() == graph.program_blobs()
    assert backwards.program_order() == graph.program_order()
    for name in ("deepen", "insert_pact", "widen", "shrink", "add_skip", "split_identity"):
        assert MORPHS[name].sites(backwards) == MORPHS[name].sites(graph), name


def test_deepen_at_zero_picks_the_first_conv_before_and_after_a_late_morph():
    graph, weights = seed()
    rule = RULES["deepen"]
    assert rule.site_at(graph, 0.0) == "stem_conv"
    for morph, site in (("deepen", "s3b0_2_conv"), ("insert_pact", "s3b0_relu"), ("insert_bn", "s3b0_1_conv")):
        child = apply_morph(morph, graph, weights, site, seed=0)
        assert rule.site_at(child.graph, 0.0) == "stem_conv", morph
        result = rule.apply(child.graph, child.weights, Descriptor("deepen", 0.0), seed=1)
        assert result.record.site == "stem_conv"
        # sites ahead of the morphed layer keep their indices
        before, after = rule.sites(graph), rule.sites(child.graph)
        cut = before.index("s3b0_1_conv")
        assert after[:cut] == before[:cut], morph


def test_positions_keep_their_layer_after_deepening_the_first_conv():
    """networkx lists a rewritten layer's replacement last; program order keeps it in place."""
    graph, weights = seed()
    child = apply_morph("deepen", graph, weights, "stem_conv", seed=0).graph
    assert conv_edges(child)[-1] == "stem_conv_b"  # networkx's order: the second factor comes last
    rule = RULES["deepen"]
    assert rule.sites(child) == ["stem_conv_a", "stem_conv_b", *RESNET8_CONVS[1:], "fc"]
    assert rule.site_at(graph, 1.0) == rule.site_at(child, 1.0) == "fc"
    assert rule.site_at(child, 0.0) == "stem_conv_a"
    # every conv the morph left alone keeps its place relative to the others
    kept = [s for s in RULES["branch"].sites(child) if s in RESNET8_CONVS]
    assert kept == RESNET8_CONVS[1:]


def test_a_new_layer_is_listed_next_to_the_one_it_follows():
    graph, weights = seed()
    child = apply_morph("insert_pact", graph, weights, "s1b0_1_bn", seed=0).graph
    sites = MORPHS["insert_pact"].sites(child)
    i = sites.index("s1b0_1_bn")
    assert sites[i - 1: i + 3] == ["s1b0_1_conv", "s1b0_1_bn", "s1b0_1_bn_act", "s1b0_relu1"]
    assert [s for s in sites if s != "s1b0_1_bn_act"] == MORPHS["insert_pact"].sites(graph)


def test_blob_and_pair_sites_follow_blob_order():
    graph, _ = seed()
    blobs = graph.program_blobs()
    widen = MORPHS["widen"].sites(graph)
    assert widen[:3] == ["stem_conv", "stem_bn", "stem_relu"]
    assert widen == sorted(widen, key=blobs.index)
    pairs = MORPHS["add_skip"].sites(graph)
    assert pairs[:2] == ["input->stem_conv", "input->stem_bn"]
    keys = [(blobs.index(u), blobs.index(v)) for u, v in (p.split("->") for p in pairs)]
    assert keys == sorted(keys)


def test_a_hand_built_spec_is_sorted_too_and_unknown_names_go_last():
    graph, _ = seed()

    def fn(graph, weights, site, params, ctx):  # pragma: no cover - never applied
        return MorphResult(graph, weights, True, MorphRecord("fake", site, {}, 0))

    spec = MorphSpec("fake", fn, lambda g: ["fc", "nowhere", "s1b0_2_conv", "stem_conv"], lambda g, s, r: {}, True)
    assert spec.sites(graph) == ["stem_conv", "s1b0_2_conv", "fc", "nowhere"]
    assert in_program_order(graph, ["fc"]) == ["fc"]


def test_parallel_branches_are_ordered_by_the_layers_that_join_them():
    """A diamond built branch b first: the join's layer names decide, not the insertion order."""
    graph = ArchGraph((2, 4, 4))
    for blob in ("x", "b1", "b2", "a1", "out"):
        graph.add_blob(blob)
    graph.add_layer("to_b1", "x", "b1", Conv2d(2, 2, 1))
    graph.add_layer("to_b2", "b1", "b2", Conv2d(2, 2, 1))
    graph.add_layer("to_a1", "x", "a1", Conv2d(2, 2, 1))
    graph.add_layer("z_from_b", "b2", "out", Identity())
    graph.add_layer("a_from_a", "a1", "out", Identity())
    graph.validate()
    assert graph.program_blobs() == ["x", "a1", "b1", "b2", "out"]
    assert graph.program_order() == {
        "x": 0, "to_a1": 1, "a1": 2, "to_b1": 3, "b1": 4, "to_b2": 5, "b2": 6,
        "a_from_a": 7, "z_from_b": 8, "out": 9,
    }
    assert MORPHS["branch"].sites(graph) == ["to_a1", "to_b1", "to_b2"]


def test_program_order_of_a_cyclic_graph_raises():
    graph = ArchGraph((1,))
    graph.add_blob("a")
    graph.add_blob("b")
    graph.add_layer("ab", "a", "b", Identity())
    graph.add_layer("ba", "b", "a", Identity())
    with pytest.raises(GraphError, match="cycle"):
        graph.program_order()
