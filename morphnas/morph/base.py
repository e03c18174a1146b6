"""What a morph is: a pure function of (graph, weights, site, params, context), and a registry.

A morph never changes its inputs: it returns a new graph and a new weights dict (unchanged
tensors may be shared, changed ones are new tensors). ``exact`` claims that in eval mode the
child computes the parent's function on any input, borders included; the verifier checks it.

Every morph lists its sites in program order (:meth:`ArchGraph.program_order`), so a position
among them (the grammar's, ``verify``'s) means the same place in the network after a morph
elsewhere: networkx lists edges in insertion order, which a morph changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from morphnas.errors import MorphError
from morphnas.ir import ArchGraph, Weights


@dataclass(frozen=True)
class MorphRecord:
    """Enough to replay a morph on the same parent: name, site, parameters and the random seed."""

    name: str
    site: str
    params: dict[str, Any]
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "site": self.site, "params": dict(self.params), "seed": self.seed}

    @staticmethod
    def from_json(data: dict[str, Any]) -> MorphRecord:
        try:
            return MorphRecord(str(data["name"]), str(data["site"]), dict(data["params"]), int(data["seed"]))
        except (KeyError, TypeError, ValueError) as err:
            raise MorphError(f"malformed morph record {data!r}: {err}") from None


@dataclass
class MorphContext:
    """Randomness and, optionally, a calibration batch of real network inputs.

    With a calibration batch, new batch norms take its statistics (exact in eval mode and close
    to the identity in train mode); without one they start at mean 0, variance 1.
    """

    generator: torch.Generator
    calibration: torch.Tensor | None = None


@dataclass
class MorphResult:
    graph: ArchGraph
    weights: Weights
    exact: bool
    record: MorphRecord
    new_weights: list[str] = field(default_factory=list)  # keys of weights created by the morph
    note: str = ""  # why a morph is approximate, or what it chose


MorphFn = Callable[[ArchGraph, Weights, str, dict[str, Any], MorphContext], MorphResult]


def in_program_order(graph: ArchGraph, sites: list[str]) -> list[str]:
    """``sites`` sorted from the input to the output (:meth:`ArchGraph.program_order`).

    A site is a layer name, a blob name or a pair ``"u->v"`` of blobs (sorted by u, then v). A
    list holding a name that is a blob and no layer is a list of blobs, sorted by blob order
    alone (a name can be both: the seeds name a blob after the layer that makes it). Names the
    graph does not know go last, in the order given.
    """
    sites = list(sites)
    if len(sites) < 2:
        return sites
    blobs = {blob: i for i, blob in enumerate(graph.program_blobs())}
    layers = {e.name for e in graph.edges()}
    rank = blobs if any(s in blobs and s not in layers for s in sites) else graph.program_order()

    def key(site: str) -> tuple[int, int, int]:
        if site in rank:
            return (0, rank[site], -1)
        u, sep, v = site.partition("->")
        if sep and u in blobs and v in blobs:
            return (0, blobs[u], blobs[v])
        return (1, 0, 0)

    return sorted(sites, key=key)


def _program_ordered(sites: Callable[[ArchGraph], list[str]]) -> Callable[[ArchGraph], list[str]]:
    if getattr(sites, "program_ordered", False):
        return sites

    @functools.wraps(sites)
    def ordered(graph: ArchGraph) -> list[str]:
        return in_program_order(graph, sites(graph))

    ordered.program_ordered = True  # type: ignore[attr-defined]
    return ordered


@dataclass(frozen=True)
class MorphSpec:
    """A registered morph: the function, where it applies, and how to pick default parameters.

    ``sites`` comes out in program order (:func:`in_program_order`) whatever order the given
    function lists them in, so every consumer (the grammar's positions, ``apply_morph``'s check,
    ``verify``'s seeded pick) sees the same order.
    """

    name: str
    fn: MorphFn
    sites: Callable[[ArchGraph], list[str]]
    default_params: Callable[[ArchGraph, str, torch.Generator], dict[str, Any]]
    exact: bool  # preserves the function exactly (checked by the verifier); False: approximate by design

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", _program_ordered(self.sites))


MORPHS: dict[str, MorphSpec] = {}


def register(
    name: str,
    *,
    sites: Callable[[ArchGraph], list[str]],
    default_params: Callable[[ArchGraph, str, torch.Generator], dict[str, Any]] | None = None,
    exact: bool = True,
) -> Callable[[MorphFn], MorphFn]:
    """Decorator adding a morph function to :data:`MORPHS` under ``name``."""

    def decorate(fn: MorphFn) -> MorphFn:
        if name in MORPHS:
            raise MorphError(f"morph {name!r} registered twice")
        MORPHS[name] = MorphSpec(name, fn, sites, default_params or (lambda g, s, r: {}), exact)
        return fn

    return decorate


def get_morph(name: str) -> MorphSpec:
    if name not in MORPHS:
        raise MorphError(f"unknown morph {name!r}; known: {', '.join(sorted(MORPHS))}")
    return MORPHS[name]


def apply_morph(
    name: str,
    graph: ArchGraph,
    weights: Weights,
    site: str,
    params: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    calibration: torch.Tensor | None = None,
) -> MorphResult:
    """Apply morph ``name`` at ``site``; ``params=None`` takes the morph's defaults for that site.

    Widen blob ``c1_relu`` (16 channels) of a small CNN to 32; the child computes the same function:

    >>> from morphnas.ir import cnn, init_weights
    >>> from morphnas.morph import apply_morph, verify
    >>> graph = cnn((1, 8, 8), num_classes=3)
    >>> weights = init_weights(graph)
    >>> child = apply_morph("widen", graph, weights, "c1_relu", {"factor": 2.0})
    >>> child.exact, child.graph.shapes()["c1_relu"]
    (True, (32, 8, 8))
    >>> verify(graph, weights, child.graph, child.weights).max_rel_err < 1e-5
    True
    """
    spec = get_morph(name)
    generator = torch.Generator().manual_seed(seed)
    if site not in spec.sites(graph):
        raise MorphError(f"morph {name!r} does not apply at {site!r}{_why_not(spec, graph, weights, site, params)}")
    if params is None:
        params = spec.default_params(graph, site, generator)
    ctx = MorphContext(generator, calibration)
    result = spec.fn(graph, weights, site, dict(params), ctx)
    result.record = MorphRecord(name, site, dict(params), seed)
    return result


def _why_not(spec: MorphSpec, graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any] | None) -> str:
    """``": <the morph's own reason>"`` for a site it does not list (a blob tied to a channel shuffle,
    a dilated convolution), or "" when it gives none (an unknown name, or a site it was not offered)."""
    if site not in graph.blobs() and site not in {e.name for e in graph.edges()}:
        return ""
    try:
        generator = torch.Generator().manual_seed(0)
        spec.fn(graph, weights, site, dict(params or spec.default_params(graph, site, generator)),
                MorphContext(generator))
    except MorphError as err:
        return f": {err}"
    except Exception:  # noqa: BLE001 - a morph meets a site of the wrong kind in many ways; it only explains
        return ""
    return ""


def replay(
    graph: ArchGraph,
    weights: Weights,
    records: list[MorphRecord],
    calibration: torch.Tensor | None = None,
) -> MorphResult | None:
    """Re-apply a lineage's morphs in order; None for an empty lineage."""
    result = None
    for record in records:
        result = apply_morph(
            record.name, graph, weights, record.site, record.params, seed=record.seed, calibration=calibration
        )
        graph, weights = result.graph, result.weights
    return result
