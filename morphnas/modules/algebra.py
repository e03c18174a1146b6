"""Module algebra: the graph abstraction of modular network morphism (Wei, Wang, Chen 2017, section 3).

A *module* (Definition 1) is a single-source, single-sink DAG whose vertices are blobs and whose
edges are convolutions. Here it is a :class:`networkx.MultiDiGraph`:

- vertex names are strings; the source and the sink are detected, never assumed to be ``"s"`` and
  ``"t"``;
- every edge has a globally unique string key (its name) and an int attribute ``kernel`` (odd:
  1, 3, 5, ...); parallel edges (a multigraph) are allowed;
- a vertex other than the source and the sink may carry an int attribute ``channels`` (the width
  of that blob). The source and the sink take the channels of the conv being morphed.

This module is pure graph math, independent of the network IR: validation and a small JSON
format, Algorithm 1 (reduction by inverse TYPE-I / TYPE-II steps, the morphing sequence, the
irreducible core), classification (simple morphable vs complex), the effective kernel of eq. 5
and the border-exactness criterion (docs/design.md#border-exactness). The filters (eqs. 2-7, Algorithm 2) live in
:mod:`morphnas.modules.solver`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx

from morphnas.errors import GraphError

__all__ = [
    "MorphStep",
    "Reduction",
    "apply_sequence",
    "apply_step",
    "check_type_i",
    "check_type_ii",
    "classify",
    "edge_list",
    "effective_kernel",
    "make_module",
    "module_from_json",
    "module_to_json",
    "paths_exact_at_borders",
    "reduce_module",
    "validate_module",
    "with_kernels",
]

StepType = Literal["I", "II"]

_JSON_KEYS = {"source", "sink", "edges", "channels"}
_EDGE_KEYS = {"name", "src", "dst", "kernel"}


# --------------------------------------------------------------------------------------------
# validation and construction


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_kernel(kernel: Any, where: str) -> None:
    if not _is_int(kernel) or kernel < 1 or kernel % 2 == 0:
        raise GraphError(f"{where}: kernel must be an odd positive int (1, 3, 5, ...), got {kernel!r}")


def validate_module(m: Any) -> tuple[str, str]:
    """Check that ``m`` is a module (Definition 1) and return its ``(source, sink)``.

    Raises :class:`GraphError` naming the problem: not a ``MultiDiGraph``, no edges, a vertex or
    edge name that is not a string, an edge name used twice, a missing or even kernel, a cycle,
    zero or several sources or sinks, ``channels`` on the source or sink or not a positive int.
    """
    if not isinstance(m, nx.MultiDiGraph):
        raise GraphError(f"a module must be a networkx.MultiDiGraph, got {type(m).__name__}")
    if m.number_of_edges() == 0:
        raise GraphError("module has no edges")
    for v in m.nodes:
        if not isinstance(v, str) or not v:
            raise GraphError(f"vertex {v!r}: vertex names must be non-empty strings")
    where: dict[str, str] = {}
    for u, v, key, data in m.edges(keys=True, data=True):
        if not isinstance(key, str) or not key:
            raise GraphError(f"edge {u}->{v} has key {key!r}: edge names must be non-empty strings")
        if key in where:
            raise GraphError(f"edge name {key!r} is used twice ({where[key]} and {u}->{v})")
        where[key] = f"{u}->{v}"
        _check_kernel(data.get("kernel"), f"edge {key!r} ({u}->{v})")
    if not nx.is_directed_acyclic_graph(m):
        cycle = nx.find_cycle(m)
        names = ", ".join(f"{u}->{v} ({k})" for u, v, k in cycle)
        raise GraphError(f"module has a cycle: {names}")
    sources = sorted(v for v, d in m.in_degree() if d == 0)
    sinks = sorted(v for v, d in m.out_degree() if d == 0)
    if len(sources) != 1:
        raise GraphError(f"module must have exactly one source, found {len(sources)}: {sources}")
    if len(sinks) != 1:
        raise GraphError(f"module must have exactly one sink, found {len(sinks)}: {sinks}")
    s, t = sources[0], sinks[0]
    for v, data in m.nodes(data=True):
        if "channels" not in data:
            continue
        if v in (s, t):
            role = "source" if v == s else "sink"
            raise GraphError(
                f"vertex {v!r} is the {role}: it takes the channels of the conv being morphed and "
                "cannot carry 'channels'"
            )
        if not _is_int(data["channels"]) or data["channels"] < 1:
            raise GraphError(f"vertex {v!r}: channels must be a positive int, got {data['channels']!r}")
    return s, t


def make_module(
    edges: Iterable[tuple[str, str, str, int]], channels: Mapping[str, int] | None = None
) -> nx.MultiDiGraph:
    """Build and validate a module from ``(name, src, dst, kernel)`` tuples and optional widths."""
    m = nx.MultiDiGraph()
    for name, src, dst, kernel in edges:
        if any(k == name for _, _, k in m.edges(keys=True)):
            raise GraphError(f"edge name {name!r} is used twice")
        m.add_edge(src, dst, key=name, kernel=kernel)
    for v, c in (channels or {}).items():
        if v not in m:
            raise GraphError(f"channels given for {v!r}, which is not a vertex of the module")
        m.nodes[v]["channels"] = c
    validate_module(m)
    return m


def module_from_json(d: Any) -> nx.MultiDiGraph:
    """Read the JSON form ``{"source", "sink", "edges": [{"name", "src", "dst", "kernel"}], "channels"}``.

    ``channels`` (vertex -> width) is optional. Everything is validated; a malformed document raises
    :class:`GraphError` saying what is wrong (missing or unknown keys, wrong types, a duplicate
    name, a cycle, two sources, a declared source or sink that is not the graph's, ...).
    """
    if not isinstance(d, Mapping):
        raise GraphError(f"module JSON must be an object, got {type(d).__name__}")
    missing = sorted({"source", "sink", "edges"} - d.keys())
    if missing:
        raise GraphError(f"module JSON is missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(str(k) for k in d.keys() - _JSON_KEYS)
    if unknown:
        raise GraphError(f"module JSON has unknown keys {unknown}; allowed: {sorted(_JSON_KEYS)}")
    for key in ("source", "sink"):
        if not isinstance(d[key], str) or not d[key]:
            raise GraphError(f"module JSON {key!r} must be a non-empty string, got {d[key]!r}")
    if not isinstance(d["edges"], list) or not d["edges"]:
        raise GraphError("module JSON 'edges' must be a non-empty list")
    edges = []
    for i, e in enumerate(d["edges"]):
        if not isinstance(e, Mapping):
            raise GraphError(f"edges[{i}] must be an object, got {type(e).__name__}")
        if e.keys() != _EDGE_KEYS:
            miss, extra = sorted(_EDGE_KEYS - e.keys()), sorted(str(k) for k in e.keys() - _EDGE_KEYS)
            raise GraphError(
                f"edges[{i}] must have keys {sorted(_EDGE_KEYS)} (missing {miss}, unknown {extra})"
            )
        for key in ("name", "src", "dst"):
            if not isinstance(e[key], str) or not e[key]:
                raise GraphError(f"edges[{i}].{key} must be a non-empty string, got {e[key]!r}")
        _check_kernel(e["kernel"], f"edges[{i}] ({e['name']!r})")
        edges.append((e["name"], e["src"], e["dst"], e["kernel"]))
    channels = d.get("channels", {})
    if not isinstance(channels, Mapping):
        raise GraphError(f"module JSON 'channels' must be an object, got {type(channels).__name__}")
    for v, c in channels.items():
        if not isinstance(v, str) or not _is_int(c) or c < 1:
            raise GraphError(f"channels[{v!r}] must be a positive int, got {c!r}")
    m = make_module(edges, channels)
    s, t = validate_module(m)
    if d["source"] != s:
        raise GraphError(f"module JSON declares source {d['source']!r} but the graph's only source is {s!r}")
    if d["sink"] != t:
        raise GraphError(f"module JSON declares sink {d['sink']!r} but the graph's only sink is {t!r}")
    return m


def module_to_json(m: nx.MultiDiGraph) -> dict[str, Any]:
    """The JSON form read by :func:`module_from_json` (edges in networkx order: grouped by source)."""
    s, t = validate_module(m)
    out: dict[str, Any] = {
        "source": s,
        "sink": t,
        "edges": [
            {"name": k, "src": u, "dst": v, "kernel": d["kernel"]}
            for u, v, k, d in m.edges(keys=True, data=True)
        ],
    }
    channels = {v: d["channels"] for v, d in m.nodes(data=True) if "channels" in d}
    if channels:
        out["channels"] = channels
    return out


def edge_list(m: nx.MultiDiGraph) -> list[tuple[str, str, str, int]]:
    """The edges as ``(name, src, dst, kernel)`` in the graph's order."""
    validate_module(m)
    return [(k, u, v, d["kernel"]) for u, v, k, d in m.edges(keys=True, data=True)]


def with_kernels(m: nx.MultiDiGraph, kernels: Mapping[str, int]) -> nx.MultiDiGraph:
    """A copy of ``m`` with the kernels of the named edges replaced."""
    validate_module(m)
    out = m.copy()
    names = {k: (u, v) for u, v, k in out.edges(keys=True)}
    for name, kernel in kernels.items():
        if name not in names:
            raise GraphError(f"no edge named {name!r} in the module")
        _check_kernel(kernel, f"edge {name!r}")
        u, v = names[name]
        out.edges[u, v, name]["kernel"] = kernel
    return out


# --------------------------------------------------------------------------------------------
# Algorithm 1


@dataclass(frozen=True)
class MorphStep:
    """One atomic morph: Algorithm 1's tuple ``(M, e1, {e2, e3}, type)``.

    Read forward it says "split edge ``edge`` (``src -> dst``, kernel ``kernel``) of ``module``
    into ``parts``": by TYPE-I (eq. 2) into ``parts[0]: src -> vertex`` then
    ``parts[1]: vertex -> dst``, or by TYPE-II (eq. 4) into two parallel edges ``src -> dst``.
    ``module`` is the module that contains ``edge`` (the reduced module of the inverse step).
    The merged kernel is ``k2 + k1 - 1`` for TYPE-I (eq. 2's K1 + K2 - 1) and ``max(k1, k2)``
    for TYPE-II (zero padding, section 3.4). ``vertex_attrs`` and ``part_attrs`` keep the
    attributes of the new vertex and edges, so replaying the step restores them exactly.
    """

    type: StepType
    edge: str
    src: str
    dst: str
    kernel: int
    parts: tuple[str, str]
    part_kernels: tuple[int, int]
    vertex: str | None
    vertex_attrs: Mapping[str, Any]
    part_attrs: tuple[Mapping[str, Any], Mapping[str, Any]]
    module: nx.MultiDiGraph | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One line, e.g. ``split edge e into (F1, F2) by TYPE-I (serial, via new vertex a)``."""
        a, b = self.parts
        if self.type == "I":
            return f"split edge {self.edge} into ({a}, {b}) by TYPE-I (serial, via new vertex {self.vertex})"
        return f"split edge {self.edge} into ({a}, {b}) by TYPE-II (parallel)"


@dataclass(frozen=True)
class Reduction:
    """The result of Algorithm 1 on a module.

    ``sequence`` is the morphing sequence Q (the reduction steps reversed): applying its steps in
    order to ``core`` rebuilds the module (:meth:`rebuild`). ``simple`` says the reduction reached
    M0, a single edge (the module is simple morphable, Definition 6); otherwise ``core`` is the
    irreducible module on which neither check fires, to be solved by Algorithm 2. The core and
    each step's module are frozen graphs (copy them to modify).
    """

    sequence: tuple[MorphStep, ...]
    core: nx.MultiDiGraph
    simple: bool
    source: str
    sink: str

    @property
    def root(self) -> str | None:
        """The name of M0's single edge when the module is simple morphable, else None."""
        if not self.simple:
            return None
        ((_, _, name),) = self.core.edges(keys=True)
        return name

    def rebuild(self) -> nx.MultiDiGraph:
        """Apply the morphing sequence to the core: the original module (same names and kernels)."""
        return apply_sequence(self.core, self.sequence)


def _fresh(base: str, m: nx.MultiDiGraph, taken: set[str] | None) -> str:
    used = {k for _, _, k in m.edges(keys=True)} | (taken or set())
    name, i = base, 2
    while name in used:
        name, i = f"{base}#{i}", i + 1
    return name


def check_type_i(m: nx.MultiDiGraph, *, taken: set[str] | None = None) -> MorphStep | None:
    """CHECKTYPEI of Algorithm 1: the inverse of a TYPE-I (serial, eq. 2) morph, or None.

    Finds the first vertex (topological order) other than the source and the sink with in-degree
    = out-degree = 1, removes it and merges its two edges ``e2: u -> v`` and ``e3: v -> w`` into
    one edge ``u -> w`` of kernel ``k2 + k3 - 1``, named ``"(e3*e2)"`` (the paper's F3 ⊛ F2), made
    unique against the module's names and ``taken``. Returns the step, whose ``module`` is the
    reduced module.
    """
    s, t = validate_module(m)
    for v in nx.topological_sort(m):
        if v in (s, t) or m.in_degree(v) != 1 or m.out_degree(v) != 1:
            continue
        ((u, _, e2, d2),) = m.in_edges(v, keys=True, data=True)
        ((_, w, e3, d3),) = m.out_edges(v, keys=True, data=True)
        kernel = d2["kernel"] + d3["kernel"] - 1
        name = _fresh(f"({e3}*{e2})", m, taken)
        reduced = m.copy()
        reduced.remove_node(v)
        reduced.add_edge(u, w, key=name, kernel=kernel)
        return MorphStep(
            type="I", edge=name, src=u, dst=w, kernel=kernel, parts=(e2, e3),
            part_kernels=(d2["kernel"], d3["kernel"]), vertex=v, vertex_attrs=dict(m.nodes[v]),
            part_attrs=(dict(d2), dict(d3)), module=nx.freeze(reduced),
        )
    return None


def check_type_ii(m: nx.MultiDiGraph, *, taken: set[str] | None = None) -> MorphStep | None:
    """CHECKTYPEII of Algorithm 1: the inverse of a TYPE-II (parallel, eq. 4) morph, or None.

    Finds the first pair of parallel edges ``e2, e3: u -> w`` (an adjacency-matrix entry > 1)
    and merges them into one edge of kernel ``max(k2, k3)`` (the smaller one zero-padded, section
    3.4), named ``"(e2+e3)"``, made unique against the module's names and ``taken``.
    """
    validate_module(m)
    for u in nx.topological_sort(m):
        for w in m.successors(u):
            keys = list(m[u][w])
            if len(keys) < 2:
                continue
            e2, e3 = keys[0], keys[1]
            d2, d3 = m.edges[u, w, e2], m.edges[u, w, e3]
            kernel = max(d2["kernel"], d3["kernel"])
            name = _fresh(f"({e2}+{e3})", m, taken)
            reduced = m.copy()
            reduced.remove_edge(u, w, key=e2)
            reduced.remove_edge(u, w, key=e3)
            reduced.add_edge(u, w, key=name, kernel=kernel)
            return MorphStep(
                type="II", edge=name, src=u, dst=w, kernel=kernel, parts=(e2, e3),
                part_kernels=(d2["kernel"], d3["kernel"]), vertex=None, vertex_attrs={},
                part_attrs=(dict(d2), dict(d3)), module=nx.freeze(reduced),
            )
    return None


def reduce_module(m: nx.MultiDiGraph) -> Reduction:
    """Algorithm 1: reduce ``m`` by inverse TYPE-I steps while possible, then inverse TYPE-II
    steps while possible, and repeat until one edge is left (M0) or neither check fires.

    Returns the morphing sequence (reduction steps reversed), whether M0 was reached (simple
    morphable) and the core (M0, or the irreducible remainder). ``m`` is not modified.
    """
    s, t = validate_module(m)
    taken = {k for _, _, k in m.edges(keys=True)}
    current = m
    steps: list[MorphStep] = []
    while current.number_of_edges() > 1:
        fired = False
        for check in (check_type_i, check_type_ii):
            while (step := check(current, taken=taken)) is not None:
                steps.append(step)
                taken.add(step.edge)
                assert step.module is not None
                current = step.module
                fired = True
        if not fired:
            break
    core = current if steps else nx.freeze(m.copy())
    return Reduction(
        sequence=tuple(reversed(steps)), core=core, simple=core.number_of_edges() == 1, source=s, sink=t
    )


def apply_step(m: nx.MultiDiGraph, step: MorphStep) -> nx.MultiDiGraph:
    """Apply one atomic morph forward: a new module with ``step.edge`` split into ``step.parts``."""
    validate_module(m)
    if not m.has_edge(step.src, step.dst, key=step.edge):
        raise GraphError(
            f"cannot {step.describe()}: the module has no edge {step.edge} {step.src}->{step.dst}"
        )
    names = {k for _, _, k in m.edges(keys=True)} - {step.edge}
    for part in step.parts:
        if part in names:
            raise GraphError(f"cannot {step.describe()}: edge name {part!r} is already used")
    out = m.copy()
    out.remove_edge(step.src, step.dst, key=step.edge)
    a, b = step.parts
    if step.type == "I":
        assert step.vertex is not None
        if step.vertex in out:
            raise GraphError(f"cannot {step.describe()}: vertex {step.vertex!r} already exists")
        out.add_node(step.vertex, **step.vertex_attrs)
        out.add_edge(step.src, step.vertex, key=a, **step.part_attrs[0])
        out.add_edge(step.vertex, step.dst, key=b, **step.part_attrs[1])
    else:
        out.add_edge(step.src, step.dst, key=a, **step.part_attrs[0])
        out.add_edge(step.src, step.dst, key=b, **step.part_attrs[1])
    return out


def apply_sequence(core: nx.MultiDiGraph, sequence: Iterable[MorphStep]) -> nx.MultiDiGraph:
    """Apply a morphing sequence to ``core`` (M0 for a simple module) and return the result."""
    m = core.copy()
    for step in sequence:
        m = apply_step(m, step)
    return m


def classify(m: nx.MultiDiGraph) -> Literal["simple", "complex"]:
    """``"simple"`` if Algorithm 1 reduces ``m`` to a single edge (Definition 6), else ``"complex"``."""
    return "simple" if reduce_module(m).simple else "complex"


# --------------------------------------------------------------------------------------------
# kernels


def _longest(m: nx.MultiDiGraph, s: str, weight: Any) -> dict[str, int]:
    """Longest-path lengths from the source over a topological order (dynamic programming)."""
    best: dict[str, int] = {}
    for v in nx.topological_sort(m):
        if v == s:
            best[v] = 0
            continue
        best[v] = max(best[u] + weight(d) for u, _, d in m.in_edges(v, data=True))
    return best


def effective_kernel(m: nx.MultiDiGraph) -> int:
    """The kernel of the module function (eq. 5): the largest ``sum(k - 1) + 1`` over s->t paths.

    A composition ``F2 ⊛ F1`` has kernel K1 + K2 - 1 (eq. 2) and a sum the larger of its terms'
    (section 3.4), so this is the kernel to which G is zero-padded (G̃, Algorithm 2).
    """
    s, t = validate_module(m)
    return _longest(m, s, lambda d: d["kernel"] - 1)[t] + 1


def paths_exact_at_borders(m: nx.MultiDiGraph) -> bool:
    """True when no s->t path stacks two convs wider than 1x1.

    Only then does a realised module with zero padding compute the module function at the image
    borders too, whatever its filters (a 1x1 conv commutes with zero padding; two stacked wider
    convs do not, unless one of them happens to be a spatial identity). See
    docs/design.md#border-exactness.
    """
    s, t = validate_module(m)
    return _longest(m, s, lambda d: int(d["kernel"] > 1))[t] <= 1
