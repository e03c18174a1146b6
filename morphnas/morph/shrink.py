"""Shrink (MorphNet, Gordon et al. CVPR 2018, Algorithm 1 steps 1-2): train with the gamma
regulariser, then remove the channels whose score fell below a threshold.

Removing channel ``c`` of a channel group slices row ``c`` out of every layer writing the group
(convolution filters, biases), entry ``c`` out of every channel-wise layer in it (batch norm,
per-channel P-activation, depthwise convolution) and column ``c`` out of every layer reading it;
an option-A shortcut keeps its other channels where its explicit channel map puts them. A group
whose channels all die takes its blobs with it, and a layer left without input or without a
consumer goes too: a residual branch whose inner channels all die loses its convolutions while
the shortcut stays (the seed summary's §2.4: "MorphNet might keep the skip-connection but remove
the residual block"). A group whose removal would cut the network in two keeps its best channel.

Shrinking is approximate: a channel with ``gamma ~ 0`` still outputs its batch-norm shift
``beta``. With a calibration batch, that constant's contribution to each consumer is folded into
the consumer's bias or the running mean of the batch norm right after it (exact away from the
zero-padded borders when the channel is constant); the verifier's error is reported either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from morphnas.errors import GraphError, MorphError
from morphnas.ir import (
    ArchGraph,
    BatchNorm2d,
    Conv2d,
    ShortcutA,
    Weights,
    compile_graph,
)
from morphnas.morph.base import MorphContext, MorphRecord, MorphResult, register
from morphnas.morph.channels import AGGREGATES, DEFAULT_THRESHOLD, ChannelMap
from morphnas.morph.verify import Verification, verify

DEFAULT_FRACTION = 0.25


# choosing what to remove ----------------------------------------------------------------------
def select_dead(cmap: ChannelMap, scores: torch.Tensor, threshold: float, group: int | None = None) -> set[int]:
    """Units scoring below ``threshold`` whose required units (option-A sources) are dead too.

    With ``group``, only the dead units with a channel in that group (and what they require).
    """
    dead = {u for u in range(cmap.n_units) if cmap.scored[u] and not cmap.frozen[u] and scores[u] < threshold}
    changed = True
    while changed:
        blocked = {u for u in dead if not cmap.requires[u] <= dead}
        dead -= blocked
        changed = bool(blocked)
    if group is None:
        return dead
    return cmap.closure({u for u in cmap.units_in(group) if u in dead})


def _rank(cmap: ChannelMap, scores: torch.Tensor, unit: int) -> tuple[float, set[int]] | None:
    """The units that go with ``unit`` and their best score; None if a frozen unit is among them."""
    units = cmap.closure({unit})
    if any(cmap.frozen[u] for u in units):
        return None
    return max(float(scores[u]) for u in units), units


def _count(cmap: ChannelMap, units: set[int], group: int) -> int:
    members = cmap.unit_of[cmap.nodes(group)]
    return int(torch.isin(members, torch.tensor(sorted(units), dtype=torch.long)).sum()) if units else 0


def _pick(cmap: ChannelMap, scores: torch.Tensor, group: int, need: int, removed: set[int]) -> set[int]:
    """Add the lowest-ranked units of ``group`` to ``removed`` until ``need`` more of its channels go."""
    width = cmap.groups[group].width
    start = _count(cmap, removed, group)
    ranked = []
    for u in cmap.units_in(group):
        if u in removed:
            continue
        r = _rank(cmap, scores, u)
        if r is not None:
            ranked.append((r[0], len(r[1] - removed), u, r[1]))
    out = set(removed)
    for *_, units in sorted(ranked, key=lambda t: t[:3]):  # lowest score; on ties, least collateral
        if _count(cmap, out, group) - start >= need:
            break
        trial = out | units
        if _count(cmap, trial, group) <= width - 1:  # never empty a group on purpose
            out = trial
    return out


def select_fraction(cmap: ChannelMap, scores: torch.Tensor, group: int, fraction: float) -> set[int]:
    """The lowest-scoring ``fraction`` of ``group``'s channels (at least one, never all)."""
    width = cmap.groups[group].width
    need = min(width - 1, max(1, math.floor(fraction * width)))
    return _pick(cmap, scores, group, need, set())


def scaled_width(width: int, factor: float) -> int:
    """``round(factor * width)``, at least 1: the width multiplier's rounding everywhere here."""
    return max(1, int(math.floor(factor * width + 0.5)))


def select_uniform(cmap: ChannelMap, scores: torch.Tensor, factor: float) -> set[int]:
    """Keep about ``factor`` of every group's channels, the highest-scoring ones (factor < 1)."""
    removed: set[int] = set()
    for g in cmap.prunable_groups():
        width = cmap.groups[g].width
        need = width - scaled_width(width, factor) - _count(cmap, removed, g)
        if need > 0:
            removed = _pick(cmap, scores, g, need, removed)
    return removed


# removing it ----------------------------------------------------------------------------------
@dataclass
class Removal:
    """A shrunk graph (and weights, unless only the graph was asked for) and what went."""

    graph: ArchGraph
    weights: Weights | None
    removed_units: frozenset[int]
    removed_channels: dict[str, int]  # group (first blob) -> channels removed
    removed_layers: list[str]
    compensated: list[str] = field(default_factory=list)  # consumers whose bias / BN mean absorbed the loss
    kept_back: list[str] = field(default_factory=list)  # groups kept at one channel to keep the net connected


def _propagate(graph: ArchGraph, dead_blobs: set[str], dead_edges: list[str]) -> tuple[ArchGraph, list[str]] | None:
    """A copy of ``graph`` without ``dead_edges``, ``dead_blobs`` and what they leave dead, and the
    removed layers (:meth:`ArchGraph.remove_dead`); None when that disconnects the input from the output.
    """
    pruned = graph.copy()
    try:
        removed = pruned.remove_dead(dead_edges, sorted(dead_blobs))
    except GraphError:
        return None
    return pruned, removed


def _removed_nodes(cmap: ChannelMap, units: set[int]) -> torch.Tensor:
    if not units:
        return torch.zeros(cmap.n_nodes, dtype=torch.bool)
    return torch.isin(cmap.unit_of, torch.tensor(sorted(units), dtype=torch.long))


def _structure(
    cmap: ChannelMap, units: set[int], scores: torch.Tensor | None
) -> tuple[set[int], ArchGraph, list[str], list[str]]:
    """The final unit set (grown by slices of dead concat inputs, shrunk to keep the net whole)."""
    graph = cmap.graph
    kept_back: list[str] = []
    for _ in range(cmap.n_units + 2):
        removed = _removed_nodes(cmap, units)
        empty = [g for g in range(len(cmap.groups)) if cmap.groups[g].width and bool(removed[cmap.nodes(g)].all())]
        dead_blobs = {b for g in empty for b in cmap.groups[g].blobs}
        dead_edges = [
            e.name for e in cmap.edges
            if graph.merge(e.dst) == "concat" and e.dst not in dead_blobs and e.src not in dead_blobs
            and bool(removed[cmap.writes(e.name)].all())
        ]
        outcome = _propagate(graph, dead_blobs, dead_edges)
        if outcome is None:
            culprit = _culprit(cmap, empty, graph)
            candidates = [u for u in cmap.units_in(culprit) if u in units]
            best = max(candidates, key=lambda u: (float(scores[u]) if scores is not None else 0.0, -u))
            units = units - cmap.closure({best}, "dependents")
            kept_back.append(cmap.group_name(culprit))
            continue
        pruned, removed_edges = outcome
        extra: set[int] = set()
        for name in removed_edges:
            edge = graph.edge(name)
            if graph.merge(edge.dst) == "concat" and edge.dst in pruned.blobs():
                extra |= set(cmap.unit_of[cmap.writes(name)].tolist())
        extra = cmap.closure(extra) - units
        if not extra:
            return units, pruned, removed_edges, kept_back
        if any(cmap.frozen[u] for u in extra):  # pragma: no cover - needs a frozen channel behind a dead input
            raise MorphError("shrink: a removed concat input carries channels that cannot be removed")
        units = units | extra
    raise MorphError("shrink: could not settle which channels to remove")  # pragma: no cover


def _culprit(cmap: ChannelMap, empty: list[int], graph: ArchGraph) -> int:
    """The first emptied group that alone disconnects the network (else the last emptied one)."""
    for g in empty:
        if _propagate(graph, set(cmap.groups[g].blobs), []) is None:
            return g
    return empty[-1]


def _compensate(
    cmap: ChannelMap, weights: Weights, removed: torch.Tensor, pruned: ArchGraph, batch: torch.Tensor
) -> tuple[Weights, list[str]]:
    """Fold each surviving consumer's mean input from removed channels into its bias or next BN's mean."""
    graph = cmap.graph
    alive = {e.name for e in pruned.edges()}
    consumers = [m for m in cmap.mixes if m.name in alive and bool(removed[m.reads].any())]
    if not consumers:
        return weights, []
    dtype = next(v.dtype for v in weights.values() if v.is_floating_point())
    module = compile_graph(graph, weights).eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        module.get_submodule(m.name).register_forward_pre_hook(
            lambda _m, args, name=m.name: seen.__setitem__(name, args[0])
        )
        for m in consumers
    ]
    with torch.no_grad():
        module(batch.to(dtype))
    for hook in hooks:
        hook.remove()
    out, done = dict(weights), []
    for mix in consumers:
        edge = graph.edge(mix.name)
        gone = torch.nonzero(removed[mix.reads]).flatten()
        x, w = seen[mix.name].index_select(1, gone), weights[f"{mix.name}.weight"].index_select(1, gone)
        with torch.no_grad():
            if isinstance(edge.layer, Conv2d):
                y = F.conv2d(x, w, None, edge.layer.stride, edge.layer.padding, edge.layer.dilation)
                delta = y.mean(dim=(0, 2, 3))
            else:
                delta = (x @ w.T).mean(dim=0)
        after = pruned.out_edges(edge.dst) if edge.dst in pruned.blobs() else []
        if edge.layer.bias:
            out[f"{mix.name}.bias"] = weights[f"{mix.name}.bias"] + delta
        elif (
            len(pruned.in_edges(edge.dst)) == 1 and len(after) == 1 and isinstance(after[0].layer, BatchNorm2d)
        ):
            key = f"{after[0].name}.running_mean"
            out[key] = weights[key] - delta
        else:
            continue
        done.append(mix.name)
    return out, done


def remove_units(
    graph: ArchGraph,
    weights: Weights | None,
    units: set[int],
    *,
    cmap: ChannelMap | None = None,
    scores: torch.Tensor | None = None,
    calibration: torch.Tensor | None = None,
) -> Removal:
    """Remove the channels of ``units`` (and what they require) from ``graph`` and ``weights``.

    ``weights=None`` rewrites the graph only. ``scores`` picks the channel a group keeps when
    emptying it would disconnect the network; ``calibration`` (a batch of real inputs) enables the
    bias / BN-mean compensation.
    """
    cmap = cmap or ChannelMap(graph)
    units = cmap.closure(set(units))
    frozen = [u for u in units if cmap.frozen[u]]
    if frozen:
        raise MorphError(f"shrink: channel unit {frozen[0]} touches a group whose width cannot change")
    units, pruned, removed_edges, kept_back = _structure(cmap, units, scores)
    removed = _removed_nodes(cmap, units)
    compensated: list[str] = []
    if weights is not None and calibration is not None and units:
        weights, compensated = _compensate(cmap, weights, removed, pruned, calibration)
    keep = [torch.nonzero(~removed[cmap.nodes(g)]).flatten() for g in range(len(cmap.groups))]
    new_weights = _slice(cmap, pruned, weights, keep)
    pruned.validate()
    counts = {
        cmap.group_name(g): int(removed[cmap.nodes(g)].sum())
        for g in range(len(cmap.groups)) if bool(removed[cmap.nodes(g)].any())
    }
    return Removal(pruned, new_weights, frozenset(units), counts, sorted(removed_edges), compensated, kept_back)


def _slice(cmap: ChannelMap, pruned: ArchGraph, weights: Weights | None, keep: list[torch.Tensor]) -> Weights | None:
    """Rewrite every surviving layer's spec (in ``pruned``) and weights to the kept channels."""
    out: Weights | None = None if weights is None else {}
    for edge in list(pruned.edges()):
        layer, name = edge.layer, edge.name
        kin = keep[cmap.group_of[edge.src]]
        offset, width = cmap.slices[name]
        kept_out = keep[cmap.group_of[edge.dst]]
        kout = kept_out[(kept_out >= offset) & (kept_out < offset + width)] - offset
        sliced: dict[str, list[tuple[int, torch.Tensor]]] = {}  # param -> (dim, kept indices)
        role = layer.channel_role(cmap.shapes[edge.src])
        if role in ("mix", "pass"):  # as the layer's type says (Layer.channel_params)
            kept = kout if role == "mix" else kin
            pruned.set_layer(name, layer.with_channels(len(kin), len(kept)))
            sliced = {param: [(out_axis, kept)] + ([] if in_axis is None else [(in_axis, kin)])
                      for param, (out_axis, in_axis) in layer.channel_params().items() if out_axis is not None}
        elif role == "block" and (len(kin), len(kout)) != (cmap.shapes[edge.src][0], width):
            # grouped convolutions and unknown types: their groups are frozen, their channels never change
            raise MorphError(f"shrink: {name!r} ({layer.type}) cannot change its channels")  # pragma: no cover
        elif role == "shortcut":
            position = {int(j): n for n, j in enumerate(kout.tolist())}
            channel_map = []
            for i in kin.tolist():
                j = layer.channel_map[i]
                if j not in position:  # pragma: no cover - select_* and closure() rule this out
                    raise MorphError(f"shrink: shortcut {name!r} would lose its target for channel {i}")
                channel_map.append(position[j])
            pruned.set_layer(name, ShortcutA(len(kin), len(kout), layer.stride, tuple(channel_map)))
        if out is None or weights is None:
            continue
        for key in [k for k in weights if k.startswith(f"{name}.")]:
            value = weights[key]
            for dim, index in sliced.get(key[len(name) + 1:], []):
                value = value.index_select(dim, index)
            out[key] = value
    return out


# the morph and the whole-network shrink -------------------------------------------------------
def _params(params: dict[str, Any]) -> tuple[str, float, str]:
    aggregate = params.get("aggregate", "max")
    modes = [k for k in ("threshold", "fraction") if k in params]
    unknown = set(params) - {"threshold", "fraction", "aggregate"}
    if unknown or len(modes) != 1:
        raise MorphError(f"shrink takes one of 'threshold' or 'fraction' (and optionally 'aggregate'), "
                         f"got {sorted(params)}")
    if aggregate not in AGGREGATES:
        raise MorphError(f"shrink aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    value = params[modes[0]]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MorphError(f"shrink {modes[0]} must be a non-negative number, got {value!r}")
    if modes[0] == "fraction" and not 0 < value < 1:
        raise MorphError(f"shrink fraction must be in (0, 1), got {value!r}")
    return modes[0], float(value), aggregate


def shrink_sites(graph: ArchGraph) -> list[str]:
    """One site per channel group that can lose channels: the group's first blob."""
    cmap = ChannelMap(graph)
    return [cmap.group_name(g) for g in cmap.prunable_groups()]


def _check_inputs(calibration: torch.Tensor | None) -> list[torch.Tensor] | None:
    return None if calibration is None else [calibration[:64]]


def describe(removal: Removal, check: Verification | None, inputs: str) -> str:
    counts = ", ".join(f"{group} -{n}" for group, n in removal.removed_channels.items())
    parts = [f"removed channels: {counts or 'none'}"]
    if removal.removed_layers:
        parts.append(f"{len(removal.removed_layers)} layer(s) went ({', '.join(removal.removed_layers[:6])}"
                     f"{', ...' if len(removal.removed_layers) > 6 else ''})")
    if removal.kept_back:
        parts.append(f"kept one channel of {', '.join(removal.kept_back)} to keep the network connected")
    if removal.compensated:
        parts.append(f"compensated {len(removal.compensated)} consumer(s)")
    if check is not None:
        parts.append(f"preservation error (max_rel_err, {inputs}) eval {check.max_rel_err:.3g}, "
                     f"train {check.train_max_rel_err:.3g}")
    return "; ".join(parts)


@register("shrink", sites=shrink_sites, default_params=lambda g, s, r: {"fraction": DEFAULT_FRACTION}, exact=False)
def shrink_morph(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Remove a channel group's weakest channels (MorphNet shrink; approximate).

    Params: ``threshold`` (remove channels scoring below it, as after regularised training) or
    ``fraction`` (remove the lowest-scoring fraction, at least one channel, never all); optional
    ``aggregate`` (``"max"`` or ``"sum"`` over the group's batch norms). Scores are the |gamma| of
    the group's batch norms, Group Lasso norms of the producers' rows without BN. Channels that
    must go along (option-A sources of removed targets, concat partners) go too. The note
    reports the verifier's error (on the calibration batch when there is one, else on random
    inputs).
    """
    mode, value, aggregate = _params(params)
    cmap = ChannelMap(graph)
    if site not in cmap.group_of:
        raise MorphError(f"shrink: no blob named {site!r}")
    group = cmap.group_of[site]
    scores = cmap.scores(weights, aggregate).detach()
    if mode == "threshold":
        units = select_dead(cmap, scores, value, group)
    else:
        units = select_fraction(cmap, scores, group, value)
    removal = remove_units(graph, weights, units, cmap=cmap, scores=scores, calibration=ctx.calibration)
    assert removal.weights is not None
    check = verify(graph, weights, removal.graph, removal.weights, inputs=_check_inputs(ctx.calibration))
    inputs = "calibration batch" if ctx.calibration is not None else "random inputs"
    return MorphResult(removal.graph, removal.weights, False, MorphRecord("shrink", site, dict(params), 0), [],
                       describe(removal, check, inputs))


@dataclass
class ShrinkResult:
    """A whole-network shrink: the new graph and weights, what went, and the verifier's verdict."""

    graph: ArchGraph
    weights: Weights
    removal: Removal
    verification: Verification
    note: str


def shrink(
    graph: ArchGraph,
    weights: Weights,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    aggregate: str = "max",
    calibration: torch.Tensor | None = None,
) -> ShrinkResult:
    """Remove every channel whose score is below ``threshold`` (MorphNet Algorithm 1, step 2).

    Run it on weights trained with :func:`~morphnas.morphnet.regulariser.regulariser`.
    """
    cmap = ChannelMap(graph)
    scores = cmap.scores(weights, aggregate).detach()
    removal = remove_units(graph, weights, select_dead(cmap, scores, threshold), cmap=cmap, scores=scores,
                           calibration=calibration)
    assert removal.weights is not None
    check = verify(graph, weights, removal.graph, removal.weights, inputs=_check_inputs(calibration))
    inputs = "calibration batch" if calibration is not None else "random inputs"
    return ShrinkResult(removal.graph, removal.weights, removal, check, describe(removal, check, inputs))
