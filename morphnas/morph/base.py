"""What a morph is: a pure function of (graph, weights, site, params, context), and a registry.

A morph never changes its inputs: it returns a new graph and a new weights dict (unchanged
tensors may be shared, changed ones are new tensors). ``exact`` claims that in eval mode the
child computes the parent's function on any input, borders included; the verifier checks it.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class MorphSpec:
    """A registered morph: the function, where it applies, and how to pick default parameters."""

    name: str
    fn: MorphFn
    sites: Callable[[ArchGraph], list[str]]
    default_params: Callable[[ArchGraph, str, torch.Generator], dict[str, Any]]
    exact: bool
    summary: str


REGISTRY: dict[str, MorphSpec] = {}


def register(
    name: str,
    *,
    sites: Callable[[ArchGraph], list[str]],
    default_params: Callable[[ArchGraph, str, torch.Generator], dict[str, Any]] | None = None,
    exact: bool = True,
) -> Callable[[MorphFn], MorphFn]:
    """Decorator adding a morph function to :data:`REGISTRY` under ``name``."""

    def decorate(fn: MorphFn) -> MorphFn:
        if name in REGISTRY:
            raise MorphError(f"morph {name!r} registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        REGISTRY[name] = MorphSpec(name, fn, sites, default_params or (lambda g, s, r: {}), exact, summary)
        return fn

    return decorate


def get_morph(name: str) -> MorphSpec:
    if name not in REGISTRY:
        raise MorphError(f"unknown morph {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


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
    """Apply morph ``name`` at ``site``; ``params=None`` takes the morph's defaults for that site."""
    spec = get_morph(name)
    generator = torch.Generator().manual_seed(seed)
    if site not in spec.sites(graph):
        raise MorphError(f"morph {name!r} does not apply at {site!r}")
    if params is None:
        params = spec.default_params(graph, site, generator)
    ctx = MorphContext(generator, calibration)
    result = spec.fn(graph, weights, site, dict(params), ctx)
    result.record = MorphRecord(name, site, dict(params), seed)
    return result


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
