"""Width morphing: give a blob, and every blob tied to it, more channels (exactly).

Wei et al., "Network Morphism" (ICML 2016), width morphing: a layer pair ``G = F2 * F1`` stays
``G`` when ``F1`` gains output filters and ``F2`` gains input channels, provided the new input
weights of ``F2`` are zero (the new filters of ``F1`` are then free, so we draw them at random
and the child can learn). Here the pair generalises to a :class:`~morphnas.morph.tied.ChannelGroup`:
every producer of the group gets random new filters, every consumer zero new input weights, and
channel-wise layers in between (batch norm: mean 0, var 1, gamma 1, beta 0; per-channel
parametric activations: a = 1, eq. 8 of the 2017 paper; depthwise convs: random new filters)
carry the new channels along.

Groups related by links change together as well: a widened input of an option-A shortcut gets
new output positions in the shortcut's (widened) output group, its old channels keep their
place in the explicit channel map; a widened input of a concat blob inserts its new channels at
that input's slice; a flattened image's new channels become ``H*W`` new features each.

New channels are identified across groups by an id. Each sits at an insertion position ``pos``
(before old channel ``pos`` of its group; always after at least one old channel) with a
creation number ``seq`` breaking ties, so the order of new channels is the same in every blob
that holds them.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from morphnas.errors import MorphError
from morphnas.ir import (
    ArchGraph,
    Edge,
    ShortcutA,
    Weights,
)
from morphnas.ir.layers import Shape
from morphnas.morph.base import MorphContext, MorphRecord, MorphResult, register
from morphnas.morph.tied import ChannelGroup, channel_groups, edge_role, in_slices

DEFAULT_FACTOR = 1.25


@dataclass(frozen=True)
class _NewChannel:
    pos: int  # inserted before old channel ``pos`` of the group
    seq: int  # creation order, breaks ties between channels at one position
    depth: int  # number of shortcuts / flattens that created it from the request


@dataclass
class _Analysis:
    """A graph's channel groups, indexed for planning."""

    graph: ArchGraph
    shapes: dict[str, Shape]
    groups: list[ChannelGroup]
    group_of: dict[str, int]  # blob -> index into groups
    slices: dict[str, tuple[int, int]]  # layer -> (offset, width) it writes in its destination

    @staticmethod
    def of(graph: ArchGraph) -> _Analysis:
        shapes = graph.shapes()
        groups = channel_groups(graph)
        group_of = {blob: i for i, g in enumerate(groups) for blob in g.blobs}
        return _Analysis(graph, shapes, groups, group_of, in_slices(graph, shapes))


Plan = dict[int, dict[int, _NewChannel]]  # group index -> channel id -> new channel
Links = dict[str, dict[int, list[int]]]  # link layer -> id in its source group -> ids it created


def plan(analysis: _Analysis, site: str, delta: int) -> tuple[Plan, Links]:
    """Which new channels every group gets when ``site``'s group grows by ``delta`` at its end."""
    counter = itertools.count()
    start = analysis.group_of[site]
    new: Plan = {i: {} for i in range(len(analysis.groups))}
    new[start] = {k: _NewChannel(analysis.groups[start].width, k, 0) for k in itertools.islice(counter, delta)}
    links = sorted({name for g in analysis.groups for name in g.links_out})
    created: Links = {name: {} for name in links}
    changed = True
    while changed:
        changed = False
        for name in links:
            changed |= _follow(analysis, analysis.graph.edge(name), new, created[name], counter, len(links))
    _check(analysis, site, new, created)
    return new, created


def _follow(
    analysis: _Analysis, edge: Edge, new: Plan, created: dict[int, list[int]], counter: Iterator[int], limit: int
) -> bool:
    """Propagate new channels across one link (both ways for a concat input); True if any moved."""
    src, dst = analysis.group_of[edge.src], analysis.group_of[edge.dst]
    offset, width = analysis.slices[edge.name]
    role = edge_role(edge, analysis.shapes)
    before = sum(map(len, new.values()))
    if role == "pass":  # into a concat blob: the same channels, shifted by the slice offset
        for k, ch in list(new[src].items()):
            new[dst].setdefault(k, _NewChannel(ch.pos + offset, ch.seq, ch.depth))
        for k, ch in list(new[dst].items()):
            if offset < ch.pos <= offset + width:
                new[src].setdefault(k, _NewChannel(ch.pos - offset, ch.seq, ch.depth))
        return sum(map(len, new.values())) > before
    spread = math.prod(analysis.shapes[edge.src][1:]) if role == "flatten" else 1
    for k, ch in sorted(new[src].items(), key=lambda kv: (kv[1].pos, kv[1].seq)):
        if k in created:
            continue
        if ch.depth >= limit:
            raise MorphError(f"widen does not terminate: new channels keep coming back through layer {edge.name!r}")
        if role == "shortcut" and src == dst:
            created[k] = [k]
            continue
        pos = offset + (ch.pos * spread if role == "flatten" else width)
        created[k] = list(itertools.islice(counter, spread))
        new[dst].update({j: _NewChannel(pos, j, ch.depth + 1) for j in created[k]})
    return sum(map(len, new.values())) > before


def _check(analysis: _Analysis, site: str, new: Plan, created: Links) -> None:
    for i, channels in new.items():
        if channels and analysis.groups[i].frozen:
            g = analysis.groups[i]
            raise MorphError(f"cannot widen {site!r}: it is tied to blob {g.blobs[0]!r}, whose group {g.frozen}")
    for name, made in created.items():
        edge = analysis.graph.edge(name)
        if edge_role(edge, analysis.shapes) != "flatten":
            continue
        offset, width = analysis.slices[name]
        mine = {j for js in made.values() for j in js}
        inside = {k for k, ch in new[analysis.group_of[edge.dst]].items() if offset < ch.pos <= offset + width}
        if inside - mine:
            raise MorphError(f"cannot widen {site!r}: flatten {name!r} would have to write channels without input")


@dataclass(frozen=True)
class _Layout:
    """Where channels of a slice go: old channel i to ``old[i]``, new channel id k to ``new[k]``."""

    size: int
    old: torch.Tensor
    new: dict[int, int]

    @property
    def fresh(self) -> torch.Tensor:
        return torch.tensor(sorted(self.new.values()), dtype=torch.long)


def _layout(channels: dict[int, _NewChannel], total: int, offset: int, width: int) -> _Layout:
    """The layout of the slice ``[offset, offset + width)`` of a group of ``total`` old channels."""
    ordered = sorted(channels.items(), key=lambda kv: (kv[1].pos, kv[1].seq))
    index = {k: ch.pos + j for j, (k, ch) in enumerate(ordered)}
    positions = [ch.pos for _, ch in ordered]
    moved = [i + bisect.bisect_right(positions, i) for i in range(total)]
    start = moved[offset]
    inside = {k: index[k] - start for k, ch in channels.items() if offset < ch.pos <= offset + width}
    old = torch.tensor(moved[offset:offset + width], dtype=torch.long) - start
    return _Layout(width + len(inside), old, inside)


def _grow(t: torch.Tensor, dim: int, layout: _Layout, make: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
    """``t`` with ``dim`` resized to the layout; old entries moved, new ones from ``make(shape)``."""
    if not layout.new:
        return t
    shape = list(t.shape)
    shape[dim] = len(layout.new)
    out_shape = list(t.shape)
    out_shape[dim] = layout.size
    out = t.new_empty(out_shape)
    out.index_copy_(dim, layout.old, t)
    out.index_copy_(dim, layout.fresh, make(shape).to(t.dtype))
    return out


def _filler(value: float) -> Callable[[list[int]], torch.Tensor]:
    return lambda shape: torch.full(shape, value)


def _random_filler(t: torch.Tensor, gen: torch.Generator) -> Callable[[list[int]], torch.Tensor]:
    """He-normal new filters, scaled like the existing ones (He et al. 2015, eq. 10)."""
    fan_in = math.prod(t.shape[1:])
    std = t.float().std().item() if t.numel() > 1 else 0.0
    std = std if math.isfinite(std) and std > 0 else math.sqrt(2.0 / fan_in)
    return lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64) * std


class _Rewrite:
    """Applies a plan to one copy of the graph and weights."""

    def __init__(self, analysis: _Analysis, new: Plan, created: Links, weights: Weights, gen: torch.Generator):
        self.analysis, self.new, self.created, self.gen = analysis, new, created, gen
        self.graph = analysis.graph.copy()
        self.weights = dict(weights)
        self.touched: list[str] = []

    def layout(self, blob: str, edge: str | None = None) -> _Layout:
        """The whole blob, or the slice layer ``edge`` writes in it."""
        g = self.analysis.group_of[blob]
        total = self.analysis.groups[g].width
        offset, width = self.analysis.slices[edge] if edge else (0, total)
        return _layout(self.new[g], total, offset, width)

    def set(self, key: str, value: torch.Tensor) -> None:
        if value is not self.weights[key]:
            self.weights[key] = value
            self.touched.append(key)

    def run(self) -> None:
        for edge in sorted(self.analysis.graph.edges(), key=lambda e: e.name):
            if self.new[self.analysis.group_of[edge.src]] or self.new[self.analysis.group_of[edge.dst]]:
                self.edge(edge)

    def edge(self, edge: Edge) -> None:
        """Grow the layer's channel parameters as its type says (:meth:`Layer.channel_params`):
        new output channels of a mixing layer get random filters (and zero biases), new input
        channels zero weights, new channels of a channel-wise layer its pass-through values."""
        layer, name = edge.layer, edge.name
        inp = self.layout(edge.src)
        role = layer.channel_role(self.analysis.shapes[edge.src])
        if role == "shortcut":
            self.graph.set_layer(name, self.shortcut(edge, inp))
            return
        if role not in ("mix", "pass"):
            return
        out = self.layout(edge.dst, name) if role == "mix" else inp
        for param, (out_axis, in_axis) in layer.channel_params().items():
            key = f"{name}.{param}"
            if key not in self.weights:  # e.g. a convolution without bias
                continue
            value = original = self.weights[key]
            if out_axis is not None:
                fill = layer.channel_fill(param)
                make = _filler(fill) if fill is not None else (
                    _random_filler(original, self.gen) if param == "weight" else _filler(0.0))
                value = _grow(value, out_axis, out, make)
            if in_axis is not None:
                value = _grow(value, in_axis, inp, _filler(0.0))
            self.set(key, value)
        resized = layer.with_channels(inp.size, out.size)
        if resized != layer:
            self.graph.set_layer(name, resized)

    def shortcut(self, edge: Edge, inp: _Layout) -> ShortcutA:
        """Old inputs keep their (moved) output channel; new inputs take the outputs made for them."""
        layer, out = edge.layer, self.layout(edge.dst, edge.name)
        channel_map = [0] * inp.size
        for i, j in enumerate(layer.channel_map):
            channel_map[int(inp.old[i])] = int(out.old[j])
        for k, made in self.created[edge.name].items():
            channel_map[inp.new[k]] = out.new[made[0]]
        return ShortcutA(inp.size, out.size, layer.stride, tuple(channel_map))


def _target(width: int, params: dict[str, Any], site: str) -> int:
    if set(params) not in ({"channels"}, {"factor"}):
        raise MorphError(f"widen takes one of 'channels' or 'factor', got {sorted(params)}")
    if "factor" in params:
        factor = params["factor"]
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1:
            raise MorphError(f"widen factor must be a number above 1, got {factor!r}")
        return math.ceil(width * factor)
    channels = params["channels"]
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise MorphError(f"widen channels must be an integer, got {channels!r}")
    if channels <= width:
        raise MorphError(f"cannot widen {site!r} from {width} to {channels} channels: widen only adds channels")
    return channels


def widen_sites(graph: ArchGraph) -> list[str]:
    """Blobs whose group (and everything linked to it) can grow: not the input, not the output."""
    analysis = _Analysis.of(graph)
    twice = _concatenated_twice(graph, analysis)
    growable = [g for i, g in enumerate(analysis.groups) if i not in twice and _can_grow(analysis, g)]
    return [blob for group in growable for blob in group.blobs]


def _concatenated_twice(graph: ArchGraph, analysis: _Analysis) -> set[int]:
    """Groups that reach one concat blob through two in-edges: their channel offsets cannot both move."""
    twice: set[int] = set()
    for blob in graph.blobs():
        if graph.merge(blob) == "concat":
            ids = [analysis.group_of.get(e.src) for e in graph.in_edges(blob)]
            twice |= {i for i in ids if i is not None and ids.count(i) > 1}
    return twice


def _can_grow(analysis: _Analysis, group: ChannelGroup) -> bool:
    if group.frozen:
        return False
    try:
        plan(analysis, group.blobs[0], 1)
    except MorphError:
        return False
    return True


def _default_params(graph: ArchGraph, site: str, generator: torch.Generator) -> dict[str, Any]:
    return {"channels": math.ceil(graph.shapes()[site][0] * DEFAULT_FACTOR)}


@register("widen", sites=widen_sites, default_params=_default_params, exact=True)
def widen(graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext) -> MorphResult:
    """Give blob ``site`` (and its tied group) more channels: random new filters, zero consumer weights."""
    if site not in graph.blobs():
        raise MorphError(f"widen: no blob named {site!r}")
    analysis = _Analysis.of(graph)
    if analysis.group_of[site] in _concatenated_twice(graph, analysis):
        raise MorphError(f"widen: blob {site!r} reaches one concat blob through two inputs; it cannot grow")
    width = analysis.groups[analysis.group_of[site]].width
    target = _target(width, params, site)
    new, created = plan(analysis, site, target - width)
    rewrite = _Rewrite(analysis, new, created, weights, ctx.generator)
    rewrite.run()
    rewrite.graph.validate()
    grown = [analysis.groups[i].blobs[0] for i, ch in new.items() if ch]
    return MorphResult(
        graph=rewrite.graph,
        weights=rewrite.weights,
        exact=True,
        record=MorphRecord("widen", site, dict(params), 0),
        new_weights=rewrite.touched,
        note=f"widened {len(grown)} channel group(s) starting at {', '.join(grown)}",
    )
