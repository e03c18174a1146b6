"""Module algebra: validation, JSON, Algorithm 1, classification, kernels (morphnas.modules.algebra)."""

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morphnas.errors import GraphError, MorphnasError
from morphnas.modules import (
    MODULES,
    apply_sequence,
    apply_step,
    check_type_i,
    check_type_ii,
    classify,
    edge_list,
    effective_kernel,
    make_module,
    module_from_json,
    module_to_json,
    paths_exact_at_borders,
    reduce_module,
    validate_module,
    with_kernels,
)
from morphnas.modules.fixtures import module

ALL3 = {f"F{i}": 3 for i in range(1, 8)}


def canonical(m):
    """Structure, names, kernels and vertex attributes, independent of insertion order."""
    edges = sorted((k, u, v, tuple(sorted(d.items()))) for u, v, k, d in m.edges(keys=True, data=True))
    nodes = sorted((v, tuple(sorted(d.items()))) for v, d in m.nodes(data=True))
    return edges, nodes


@st.composite
def random_modules(draw, max_edges=8):
    """A random single-source single-sink DAG module: up to ``max_edges`` edges (parallel edges
    allowed), kernels in {1, 3} with at most one 3x3 per source-to-sink path
    (docs/design.md#random-modules-in-tests)."""
    n = draw(st.integers(0, max_edges // 2))
    names = ["s"] + [f"v{i}" for i in range(1, n + 1)] + ["t"]
    pairs = []
    for i in range(1, n + 1):
        pairs.append((draw(st.integers(0, i - 1)), i))  # reachable from the source
        pairs.append((i, draw(st.integers(i + 1, n + 1))))  # reaches the sink
    if n == 0:
        pairs.append((0, 1))
    for _ in range(draw(st.integers(0, max_edges - len(pairs)))):
        i = draw(st.integers(0, n))
        pairs.append((i, draw(st.integers(i + 1, n + 1))))
    wide = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    kernels = [1] * len(pairs)
    for idx in draw(st.permutations(range(len(pairs)))):
        if not wide[idx]:
            continue
        kernels[idx] = 3
        if not paths_exact_at_borders(_build(names, pairs, kernels)):
            kernels[idx] = 1
    return _build(names, pairs, kernels)


def _build(names, pairs, kernels):
    return make_module(
        [(f"E{j}", names[a], names[b], k) for j, ((a, b), k) in enumerate(zip(pairs, kernels, strict=True))]
    )


# --------------------------------------------------------------------------------------------
# fixtures and classification


def test_fixtures_classify_as_in_the_paper():
    assert {name: classify(m) for name, m in MODULES.items()} == {
        "A": "simple", "B": "simple", "C": "simple", "D": "complex",
    }


def test_module_d_is_irreducible_and_its_own_core():
    d = MODULES["D"]
    assert check_type_i(d) is None and check_type_ii(d) is None  # Proposition 7
    red = reduce_module(d)
    assert not red.simple and red.sequence == () and red.root is None
    assert canonical(red.core) == canonical(d)


def test_fixture_structure_matches_design():
    d = {k: (u, v, kern) for k, u, v, kern in edge_list(MODULES["D"])}
    assert d == {
        "F1": ("s", "a", 1), "F2": ("s", "b", 1), "F3": ("a", "c", 1), "F4": ("b", "c", 1),
        "F5": ("a", "t", 3), "F6": ("c", "t", 3), "F7": ("b", "t", 3),
    }
    pairs = {name: sorted((u, v) for _, u, v, _ in edge_list(m)) for name, m in MODULES.items()}
    assert pairs["A"] == [("a", "t"), ("s", "a"), ("s", "t")]
    assert pairs["B"] == [("a", "t"), ("b", "t"), ("s", "a"), ("s", "b"), ("s", "t")]
    assert pairs["C"] == [("a", "b"), ("a", "t"), ("b", "t"), ("s", "a")]
    for m in MODULES.values():
        assert paths_exact_at_borders(m)
        assert validate_module(m) == ("s", "t")


def test_fixtures_are_frozen_and_module_returns_copies():
    with pytest.raises(nx.NetworkXError):
        MODULES["A"].add_edge("s", "t", key="X", kernel=1)
    m = module("A")
    m.add_edge("s", "t", key="X", kernel=1)
    assert MODULES["A"].number_of_edges() == 3
    with pytest.raises(KeyError):
        module("Z")


# --------------------------------------------------------------------------------------------
# Algorithm 1


def test_reduce_module_c_gives_the_paper_sequence():
    red = reduce_module(MODULES["C"])
    assert red.simple and red.core.number_of_edges() == 1
    assert [s.describe() for s in red.sequence] == [
        "split edge ((F4+(F3*F2))*F1) into (F1, (F4+(F3*F2))) by TYPE-I (serial, via new vertex a)",
        "split edge (F4+(F3*F2)) into (F4, (F3*F2)) by TYPE-II (parallel)",
        "split edge (F3*F2) into (F2, F3) by TYPE-I (serial, via new vertex b)",
    ]
    assert red.root == "((F4+(F3*F2))*F1)"
    assert [s.kernel for s in red.sequence] == [3, 3, 3]
    # each step's module is the module that contains the edge it splits
    for step in red.sequence:
        assert step.module.has_edge(step.src, step.dst, key=step.edge)


def test_merged_kernels():
    serial = make_module([("A", "s", "v", 3), ("B", "v", "t", 5)])
    step = check_type_i(serial)
    assert (step.type, step.kernel, step.parts, step.vertex) == ("I", 7, ("A", "B"), "v")
    assert edge_list(step.module) == [("(B*A)", "s", "t", 7)]
    parallel = make_module([("A", "s", "t", 1), ("B", "s", "t", 3)])
    step = check_type_ii(parallel)
    assert (step.type, step.kernel, step.parts, step.vertex) == ("II", 3, ("A", "B"), None)
    assert check_type_i(parallel) is None and check_type_ii(serial) is None


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_replay_reproduces_simple_modules(name):
    m = MODULES[name]
    red = reduce_module(m)
    assert red.simple
    assert (red.sequence[0].module.number_of_edges(), red.core.number_of_edges()) == (1, 1)
    assert canonical(red.rebuild()) == canonical(m)
    assert canonical(apply_sequence(red.core, red.sequence)) == canonical(m)
    # the root edge carries the effective kernel
    ((_, _, d),) = red.core.edges(data=True)
    assert d["kernel"] == effective_kernel(m)


def test_replay_restores_channels_and_extra_attributes():
    m = make_module([("F1", "s", "a", 1), ("F2", "a", "t", 3), ("F3", "s", "t", 1)], {"a": 12})
    m.edges["s", "a", "F1"]["note"] = "x"
    red = reduce_module(m)
    assert "a" not in red.core
    assert canonical(red.rebuild()) == canonical(m)


def test_complex_module_reduces_to_its_core_and_replays():
    # D with F5 replaced by a serial chain a->x->t and a parallel 1x1 beside F7
    m = make_module(
        [
            ("F1", "s", "a", 1), ("F2", "s", "b", 1), ("F3", "a", "c", 1), ("F4", "b", "c", 1),
            ("F5a", "a", "x", 1), ("F5b", "x", "t", 3), ("F6", "c", "t", 3), ("F7", "b", "t", 3),
            ("F8", "b", "t", 1),
        ],
        {"x": 5},
    )
    red = reduce_module(m)
    assert not red.simple and classify(m) == "complex"
    assert red.core.number_of_edges() == 7 and "x" not in red.core
    assert sorted(s.type for s in red.sequence) == ["I", "II"]
    assert canonical(red.rebuild()) == canonical(m)


def test_reduce_does_not_modify_its_input_and_handles_m0():
    m = module("B")
    before = canonical(m)
    reduce_module(m)
    assert canonical(m) == before
    m0 = make_module([("G", "in", "out", 3)])
    red = reduce_module(m0)
    assert red.simple and red.sequence == () and red.root == "G"
    assert (red.source, red.sink) == ("in", "out")


def test_merged_names_never_collide_with_existing_ones():
    m = make_module([("F1", "s", "a", 1), ("F2", "a", "t", 1), ("(F2*F1)", "s", "t", 3)])
    red = reduce_module(m)
    names = [s.edge for s in red.sequence]
    assert len(set(names)) == len(names) and "(F2*F1)#2" in names
    assert canonical(red.rebuild()) == canonical(m)


def test_apply_step_rejects_steps_that_do_not_apply():
    split_root, split_serial = reduce_module(MODULES["A"]).sequence
    with pytest.raises(GraphError, match="has no edge"):
        apply_step(MODULES["A"], split_root)
    clash = make_module([(split_root.edge, "s", "t", 3), ("F3", "s", "t", 1)])
    with pytest.raises(GraphError, match="'F3' is already used"):
        apply_step(clash, split_root)
    taken = make_module([(split_serial.edge, "s", "t", 3), ("X", "s", "a", 1), ("Y", "a", "t", 1)])
    with pytest.raises(GraphError, match="vertex 'a' already exists"):
        apply_step(taken, split_serial)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(random_modules())
def test_random_modules_replay_and_classify(m):
    red = reduce_module(m)
    assert canonical(red.rebuild()) == canonical(m)
    assert red.simple == (red.core.number_of_edges() == 1)
    # the core is irreducible, and the merged kernels preserve the effective kernel
    assert check_type_i(red.core) is None or red.simple
    assert check_type_ii(red.core) is None
    assert effective_kernel(red.core) == effective_kernel(m)
    assert paths_exact_at_borders(m)
    paths = list(nx.all_simple_edge_paths(m, "s", "t"))
    assert effective_kernel(m) == max(sum(m.edges[e]["kernel"] - 1 for e in p) + 1 for p in paths)


# --------------------------------------------------------------------------------------------
# kernels


def test_effective_kernel_and_border_exactness():
    assert [effective_kernel(MODULES[n]) for n in "ABCD"] == [3, 3, 3, 3]
    d7 = with_kernels(MODULES["D"], ALL3)
    assert effective_kernel(d7) == 7  # F1, F3, F6: three 3x3 stacked
    assert not paths_exact_at_borders(d7)
    assert paths_exact_at_borders(make_module([("A", "s", "a", 5), ("B", "a", "t", 1)]))
    assert not paths_exact_at_borders(make_module([("A", "s", "a", 3), ("B", "a", "t", 3)]))
    assert effective_kernel(make_module([("A", "s", "a", 3), ("B", "a", "t", 5), ("C", "s", "t", 9)])) == 9
    with pytest.raises(GraphError, match="no edge named"):
        with_kernels(MODULES["D"], {"F9": 3})


# --------------------------------------------------------------------------------------------
# validation and JSON


def test_json_round_trip():
    m = make_module([("F1", "s", "a", 1), ("F2", "a", "t", 3), ("F3", "s", "t", 1)], {"a": 16})
    d = module_to_json(m)
    assert d == {
        "source": "s",
        "sink": "t",
        "edges": [
            {"name": "F1", "src": "s", "dst": "a", "kernel": 1},
            {"name": "F3", "src": "s", "dst": "t", "kernel": 1},
            {"name": "F2", "src": "a", "dst": "t", "kernel": 3},
        ],
        "channels": {"a": 16},
    }
    assert canonical(module_from_json(d)) == canonical(m)
    for m in MODULES.values():
        assert "channels" not in module_to_json(m)
        assert canonical(module_from_json(module_to_json(m))) == canonical(m)


def _doc(**changes):
    d = module_to_json(MODULES["A"])
    d.update(changes)
    return d


def _edge(**changes):
    e = {"name": "F1", "src": "s", "dst": "a", "kernel": 1}
    e.update(changes)
    return e


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be an object"),
        ({"source": "s", "sink": "t"}, "missing 'edges'"),
        (_doc(extra=1), "unknown keys"),
        (_doc(source=3), "'source' must be a non-empty string"),
        (_doc(edges=[]), "non-empty list"),
        (_doc(edges=[1]), r"edges\[0\] must be an object"),
        (_doc(edges=[{"name": "F1", "src": "s", "dst": "t"}]), r"missing \['kernel'\]"),
        (_doc(edges=[_edge(colour="red")]), r"unknown \['colour'\]"),
        (_doc(edges=[_edge(src=1)]), r"edges\[0\].src must be a non-empty string"),
        (_doc(edges=[_edge(kernel="3")]), "odd positive int"),
        (_doc(edges=[_edge(kernel=2)]), "odd positive int"),
        (_doc(edges=[_edge(kernel=True)]), "odd positive int"),
        (_doc(edges=[_edge(), _edge(dst="t")]), "used twice"),
        (_doc(edges=[_edge(), _edge(name="F2", src="a", dst="s")]), "cycle"),
        (_doc(edges=[_edge(), _edge(name="F2", src="x", dst="a")], sink="a"), "exactly one source"),
        (_doc(edges=[_edge(), _edge(name="F2", src="s", dst="b")], sink="a"), "exactly one sink"),
        (_doc(source="a"), "declares source 'a'"),
        (_doc(sink="u"), "declares sink 'u'"),
        (_doc(channels={"s": 4}), "is the source"),
        (_doc(channels={"t": 4}), "is the sink"),
        (_doc(channels={"z": 4}), "not a vertex"),
        (_doc(channels={"a": 0}), "positive int"),
        (_doc(channels=[1]), "'channels' must be an object"),
    ],
)
def test_json_errors(doc, message):
    with pytest.raises(GraphError, match=message):
        module_from_json(doc)


def test_validate_module_errors():
    with pytest.raises(GraphError, match="MultiDiGraph"):
        validate_module(nx.DiGraph())
    with pytest.raises(GraphError, match="no edges"):
        validate_module(nx.MultiDiGraph())
    m = nx.MultiDiGraph()
    m.add_edge("s", "t", key=0, kernel=1)
    with pytest.raises(GraphError, match="edge names must be non-empty strings"):
        validate_module(m)
    m = nx.MultiDiGraph()
    m.add_edge("s", "t", key="A")
    with pytest.raises(GraphError, match="'A'.*odd positive int"):
        validate_module(m)
    m = nx.MultiDiGraph()
    m.add_edge("s", "s", key="A", kernel=1)
    with pytest.raises(GraphError, match="cycle"):
        validate_module(m)
    m = make_module([("A", "s", "t", 1)])
    m.add_node("lonely")
    with pytest.raises(GraphError, match="exactly one source"):
        validate_module(m)
    m = make_module([("A", "s", "t", 1)])
    m.add_edge(1, "t", key="B", kernel=1)
    with pytest.raises(GraphError, match="vertex names"):
        validate_module(m)
    with pytest.raises(GraphError, match="used twice"):
        make_module([("A", "s", "a", 1), ("A", "a", "t", 1)])
    assert issubclass(GraphError, MorphnasError)
