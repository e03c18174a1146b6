"""Expand (MorphNet, Gordon et al. CVPR 2018, Algorithm 1 step 3): the uniform width multiplier.

Find the largest ``w`` with ``F(w * O_1:M) <= zeta`` (``F`` the network's MACs or parameters,
``O`` its widths, ``zeta`` the budget) by bisection on ``w`` with :func:`morphnas.ir.cost` as
``F``, then apply it. Growing (``w > 1``) uses the exact widen morph group by group (Wei et al.
2016: random new filters, zero consumer weights), so the expanded network computes the shrunk
one's function. ``w < 1`` is MorphNet's naive baseline, "the width multiplier alone" (the seed
summary's §1): every group keeps its ``round(w * width)`` highest-scoring channels, which is
approximate.

Widths round as ``max(1, round(w * width))``. Widening a group also widens the groups it feeds
through option-A shortcuts (their channel map must stay a map), so groups are widened in
topological order and a group already grown past its target by such a link is left alone; the
bisection measures the network the same code builds, so the budget holds regardless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from morphnas.errors import ConfigError, GraphError, MorphError
from morphnas.ir import ArchGraph, Weights, compile_graph, cost
from morphnas.morph.base import MorphContext, MorphRecord, MorphResult, register
from morphnas.morph.channels import TARGETS, ChannelMap
from morphnas.morph.shrink import remove_units, scaled_width, select_uniform
from morphnas.morph.verify import Verification, verify
from morphnas.morph.width import widen, widen_sites

DEFAULT_FACTOR = 1.25
DEFAULT_TOLERANCE = 1e-3  # bisection stops when hi - lo <= tolerance * lo
MAX_FACTOR = 64.0


def growable_groups(graph: ArchGraph) -> list[str]:
    """First blobs of the groups the widen morph can grow, in topological order."""
    sites = set(widen_sites(graph))
    cmap = ChannelMap(graph)
    return [cmap.group_name(g) for g in range(len(cmap.groups)) if cmap.group_name(g) in sites]


def _placeholder(graph: ArchGraph) -> Weights:
    """Zero weights of the right shapes, for building a widened graph without its weights."""
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in compile_graph(graph).state_dict().items()}


def widen_groups(
    graph: ArchGraph, weights: Weights, targets: dict[str, int], generator: torch.Generator,
    skipped: list[str] | None = None,
) -> tuple[ArchGraph, Weights]:
    """Widen each group (named by its first blob) to its target width, in topological order (exact).

    A group the widen morph refuses (it raises MorphError or GraphError) keeps its width and is
    appended to ``skipped``: the result stays exact, only less wide there.
    """
    ctx = MorphContext(generator)
    for blob, target in targets.items():
        if graph.shapes()[blob][0] < target:
            try:
                result = widen(graph, weights, blob, {"channels": target}, ctx)
            except (MorphError, GraphError):
                if skipped is not None:
                    skipped.append(blob)
                continue
            graph, weights = result.graph, result.weights
    return graph, weights


@dataclass
class Scaled:
    graph: ArchGraph
    weights: Weights | None
    factor: float
    exact: bool


def scale_network(
    graph: ArchGraph,
    weights: Weights | None,
    factor: float,
    *,
    seed: int = 0,
    scores: torch.Tensor | None = None,
    aggregate: str = "max",
    calibration: torch.Tensor | None = None,
    groups: list[str] | None = None,
    cmap: ChannelMap | None = None,
) -> Scaled:
    """Multiply every group's width by ``factor`` (exact for ``factor >= 1``).

    ``weights=None`` builds the graph only (the bisection's probe). Shrinking keeps each group's
    highest-scoring channels (``scores``, default from ``weights``).
    """
    if not factor > 0 or not math.isfinite(factor):
        raise MorphError(f"width multiplier must be a positive number, got {factor!r}")
    if factor == 1:
        return Scaled(graph, weights, 1.0, True)
    if factor > 1:
        groups = groups if groups is not None else growable_groups(graph)
        shapes = graph.shapes()
        targets = {blob: scaled_width(shapes[blob][0], factor) for blob in groups}
        start = weights if weights is not None else _placeholder(graph)
        new_graph, new_weights = widen_groups(graph, start, targets, torch.Generator().manual_seed(seed))
        return Scaled(new_graph, new_weights if weights is not None else None, factor, True)
    cmap = cmap or ChannelMap(graph)
    if scores is None:
        scores = cmap.scores(weights, aggregate).detach() if weights is not None else torch.zeros(cmap.n_units)
    units = select_uniform(cmap, scores, factor)
    removal = remove_units(graph, weights, units, cmap=cmap, scores=scores, calibration=calibration)
    return Scaled(removal.graph, removal.weights, factor, False)


@dataclass
class ExpandResult:
    """The network at the largest width multiplier within budget, and how it was found."""

    graph: ArchGraph
    weights: Weights
    factor: float
    cost: dict[str, float | int]
    budget: float
    target: str
    exact: bool
    verification: Verification | None  # of the scaled network against the input network
    probes: int  # distinct networks the bisection costed


def _widths_key(graph: ArchGraph) -> tuple[tuple[str, int], ...]:
    shapes = graph.shapes()
    return tuple(sorted((e.name, shapes[e.dst][0]) for e in graph.edges()))


def expand_to_budget(
    graph: ArchGraph,
    weights: Weights,
    budget: float,
    target: str = "macs",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    aggregate: str = "max",
    calibration: torch.Tensor | None = None,
) -> ExpandResult:
    """MorphNet's expand step: the largest uniform ``w`` with ``cost(w * widths)[target] <= budget``.

    Bisection on ``w`` until ``hi - lo <= tolerance * lo`` (cost is a step function of ``w``, as
    widths are integers); ``w`` above 1 widens exactly, below 1 shrinks uniformly. ConfigError
    when even the narrowest network (one channel per group) exceeds the budget or ``w`` would
    pass :data:`MAX_FACTOR`.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if not budget > 0 or not math.isfinite(budget):
        raise ConfigError(f"budget must be a positive number, got {budget!r}")
    cmap = ChannelMap(graph)
    scores = cmap.scores(weights, aggregate).detach()
    groups = growable_groups(graph)
    memo: dict[tuple[tuple[str, int], ...], float] = {}  # by layer widths: many w build the same network

    def cost_at(w: float) -> float:
        probe = scale_network(graph, None, w, seed=seed, scores=scores, groups=groups, cmap=cmap)
        key = _widths_key(probe.graph)
        if key not in memo:
            memo[key] = float(cost(probe.graph)[target])
        return memo[key]

    lo, hi = _bracket(cost_at, budget)
    while hi - lo > tolerance * lo:
        mid = 0.5 * (lo + hi)
        if cost_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    scaled = scale_network(graph, weights, lo, seed=seed, scores=scores, groups=groups, cmap=cmap,
                           calibration=calibration)
    assert scaled.weights is not None
    check = None if lo == 1 else verify(graph, weights, scaled.graph, scaled.weights,
                                        inputs=None if calibration is None else [calibration[:64]])
    return ExpandResult(scaled.graph, scaled.weights, lo, cost(scaled.graph), float(budget), target, scaled.exact,
                        check, len(memo))


def narrowest_cost(graph: ArchGraph, target: str = "macs") -> float:
    """The cost of ``graph`` with every group that can shrink down to one channel.

    A lower bound for what :func:`expand_to_budget` can reach from ``graph`` itself (a shrink
    that removes whole branches can go below it).
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return float(cost(scale_network(graph, None, 1e-6).graph)[target])


def _bracket(cost_at: Callable[[float], float], budget: float) -> tuple[float, float]:
    """``lo`` within budget and ``hi`` over it (``hi = 2 lo`` or ``lo = hi / 2`` steps)."""
    if cost_at(1.0) <= budget:
        lo, hi = 1.0, 2.0
        while cost_at(hi) <= budget:
            lo, hi = hi, 2 * hi
            if hi > MAX_FACTOR:
                raise ConfigError(f"budget {budget:g} is beyond a width multiplier of {MAX_FACTOR:g}")
        return lo, hi
    lo, hi = 0.5, 1.0
    while cost_at(lo) > budget:
        hi, lo = lo, lo / 2
        if lo < 1e-3:
            raise ConfigError(f"budget {budget:g} is below the cost of the narrowest network ({cost_at(lo):g})")
    return lo, hi


# the morph ------------------------------------------------------------------------------------
def _expand_sites(graph: ArchGraph) -> list[str]:
    """The whole network, named by its input blob (when any group can grow)."""
    return [graph.source] if widen_sites(graph) else []


@register("expand", sites=_expand_sites, default_params=lambda g, s, r: {"factor": DEFAULT_FACTOR}, exact=True)
def expand_morph(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Multiply every channel group's width by ``factor`` > 1 (MorphNet expand; exact via the widen morph).

    The site is the network's input blob (the morph is global). Widths round as
    ``round(factor * width)``; groups grown past their target through a shortcut stay as they are,
    and groups the widen morph refuses keep their width (the note names them).
    """
    if set(params) != {"factor"}:
        raise MorphError(f"expand takes 'factor', got {sorted(params)}")
    factor = params["factor"]
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1 or not math.isfinite(factor):
        raise MorphError(f"expand factor must be a number above 1, got {factor!r}")
    if site != graph.source:
        raise MorphError(f"expand applies to the whole network: its site is the input blob {graph.source!r}")
    before = dict(_out_widths(graph))
    groups = growable_groups(graph)
    shapes = graph.shapes()
    targets = {blob: scaled_width(shapes[blob][0], float(factor)) for blob in groups}
    skipped: list[str] = []
    new_graph, new_weights = widen_groups(graph, weights, targets, ctx.generator, skipped)
    grown = [name for name, n in _out_widths(new_graph) if n > before.get(name, n)]
    touched = [k for k in new_weights if k not in weights or new_weights[k] is not weights[k]]
    note = f"widened {len(groups) - len(skipped)} channel group(s) by {factor:g}; {len(grown)} layer(s) grew"
    if skipped:
        note += f"; the widen morph refused {', '.join(skipped)} (left as they were)"
    return MorphResult(new_graph, new_weights, True, MorphRecord("expand", site, dict(params), 0), touched, note)


def _out_widths(graph: ArchGraph) -> list[tuple[str, int]]:
    shapes = graph.shapes()
    return [(e.name, shapes[e.dst][0]) for e in graph.edges()]
