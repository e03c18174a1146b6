"""Tied channels: which blobs share one channel index, and which layers write, read or pass them.

A blob's channels (dim 0 of its shape: C of (C, H, W), F of (F,)) cannot change alone. A
channel-wise layer (batch norm, activation, parametric activation, identity, pooling, dropout,
depthwise convolution, global average pooling, flattening a vector) maps channel ``i`` of its
input to channel ``i`` of its output, and a blob that adds (or multiplies) its in-layers gives
every operand the same channel ``i``. Blobs joined that way form a :class:`ChannelGroup`: the
unit whose width changes in the width morphing of Wei et al. (ICML 2016, "Network Morphism")
and whose channels MorphNet (Gordon et al., CVPR 2018) prunes together.

Three layer kinds relate two groups without tying them (``links``): an option-A shortcut (input
channel ``i`` lands on output channel ``channel_map[i]``), flattening an image (channel ``c``
becomes features ``c*H*W ... c*H*W + H*W - 1``) and a channel-wise layer feeding a concat blob
(its channels land at an offset, see :func:`in_slices`).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from morphnas.ir import ArchGraph, Conv2d, Edge
from morphnas.ir.layers import Shape


@dataclass(frozen=True)
class ChannelGroup:
    """Blobs sharing one channel index, and the layers around them (all names, sorted)."""

    blobs: tuple[str, ...]  # in topological order
    width: int
    producers: tuple[str, ...]  # convolutions / linears writing the channels (a concat input writes its slice)
    consumers: tuple[str, ...]  # convolutions / linears reading them
    passthrough: tuple[str, ...]  # channel-wise layers with both ends in the group
    links_in: tuple[str, ...]  # shortcuts, flattens and concat inputs from another group
    links_out: tuple[str, ...]  # the same, to another group
    frozen: str = ""  # why the width cannot change; empty if it can


def edge_role(edge: Edge, shapes: dict[str, Shape]) -> str:
    """How a layer treats channels: ``pass``, ``mix``, ``shortcut``, ``flatten`` or ``block``, as its
    type says (:meth:`~morphnas.ir.layers.Layer.channel_role`); ``block`` is anything width changes
    cannot go through (grouped, non-depthwise convolutions, and types that say nothing)."""
    return edge.layer.channel_role(shapes[edge.src])


def in_slices(graph: ArchGraph, shapes: dict[str, Shape] | None = None) -> dict[str, tuple[int, int]]:
    """For every layer, ``(offset, width)`` of the channels it writes in its destination blob.

    A layer into an adding blob writes all of it; the inputs of a concat blob write consecutive
    slices in the blob's ``order``.
    """
    shapes = shapes or graph.shapes()
    slices: dict[str, tuple[int, int]] = {}
    for blob in graph.blobs():
        offset = 0
        for edge in graph.in_edges(blob):
            if graph.merge(blob) == "concat":
                width = edge.layer.output_shape(shapes[edge.src])[0]
                slices[edge.name] = (offset, width)
                offset += width
            else:
                slices[edge.name] = (0, shapes[blob][0])
    return slices


def ties(edge: Edge, graph: ArchGraph, shapes: dict[str, Shape]) -> bool:
    """Whether the layer puts its two ends in one group (channel-wise into a blob that adds or
    multiplies: channel i of every operand makes channel i of the result)."""
    return edge_role(edge, shapes) == "pass" and graph.merge(edge.dst) in ("add", "mul")


def channel_groups(graph: ArchGraph) -> list[ChannelGroup]:
    """The graph's channel groups, ordered by their first blob in topological order."""
    shapes = graph.shapes()
    order = {blob: i for i, blob in enumerate(graph.topological_blobs())}
    tied = nx.Graph()
    tied.add_nodes_from(graph.blobs())
    edges = sorted(graph.edges(), key=lambda e: e.name)
    tied.add_edges_from((e.src, e.dst) for e in edges if ties(e, graph, shapes))
    components = sorted((sorted(c, key=order.__getitem__) for c in nx.connected_components(tied)),
                        key=lambda c: order[c[0]])
    return [_group(graph, tuple(blobs), edges, shapes) for blobs in components]


def _group(graph: ArchGraph, blobs: tuple[str, ...], edges: list[Edge], shapes: dict[str, Shape]) -> ChannelGroup:
    members = set(blobs)
    roles = {e.name: edge_role(e, shapes) for e in edges if e.src in members or e.dst in members}
    inner = [e for e in edges if e.src in members and e.dst in members and ties(e, graph, shapes)]
    inner_names = {e.name for e in inner}
    links = [e for e in edges if roles.get(e.name) in ("pass", "shortcut", "flatten") and e.name not in inner_names]
    return ChannelGroup(
        blobs=blobs,
        width=shapes[blobs[0]][0],
        producers=tuple(e.name for e in edges if e.dst in members and roles.get(e.name) == "mix"),
        consumers=tuple(e.name for e in edges if e.src in members and roles.get(e.name) == "mix"),
        passthrough=tuple(e.name for e in inner),
        links_in=tuple(e.name for e in links if e.dst in members),
        links_out=tuple(e.name for e in links if e.src in members),
        frozen=_frozen(graph, members, [e for e in edges if roles.get(e.name) == "block"]),
    )


def _frozen(graph: ArchGraph, members: set[str], blocking: list[Edge]) -> str:
    if graph.source in members:
        return f"contains the network input {graph.source!r}"
    if graph.sink in members:
        return f"contains the network output {graph.sink!r}"
    for edge in blocking:
        what = f"grouped conv (groups={edge.layer.groups})" if isinstance(edge.layer, Conv2d) else edge.layer.type
        return f"is read or written by layer {edge.name!r}, a {what} whose width cannot change"
    return ""
