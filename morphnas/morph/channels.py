"""Every channel of a graph as a node, grouped into removable units: what shrink, expand and
MorphNet's regulariser read (Gordon et al., CVPR 2018).

Channels are analysed per :func:`morphnas.morph.tied.channel_groups`: all channels tied through
additions form one group and live or die together. :class:`ChannelMap` goes one step further and
joins channels that are the *same* values seen through a link (a channel-wise layer into a concat
blob, a flattened image channel and its ``H*W`` features) into one **unit**, the thing that is
removed as a whole. Option-A shortcuts follow their explicit channel map: input channel ``i``
lands on output channel ``channel_map[i]``, so removing that output channel *requires* removing
input channel ``i`` (the reverse is allowed: the shortcut then simply stops writing there).

A unit's score is the max (or sum) of ``|gamma|`` over the batch norms that scale its channels,
else the Group Lasso norm of its producers' output rows; its cost weight is the derivative of
the network's MACs or parameters in it (see :mod:`morphnas.morphnet.regulariser`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, BatchNorm2d
from morphnas.ir.layers import Shape
from morphnas.morph.tied import ChannelGroup, channel_groups, edge_role, in_slices

TARGETS: tuple[str, ...] = ("macs", "params")
AGGREGATES: tuple[str, ...] = ("max", "sum")
DEFAULT_THRESHOLD = 1e-2  # MorphNet's usual gamma threshold for "this channel is dead"



def check_choice(target: str, aggregate: str = "max") -> None:
    """ConfigError unless ``target`` is in :data:`TARGETS` and ``aggregate`` in :data:`AGGREGATES`."""
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")


@dataclass
class _MixCost:
    """One convolution or linear layer: the channel nodes it reads and writes, and its cost factors."""

    name: str
    reads: torch.Tensor  # node indices
    writes: torch.Tensor
    macs: float  # per (input, output) channel pair: k^2 * H_out * W_out (1 for a linear)
    params: float  # per pair: k^2 (1 for a linear)
    bias: bool


class ChannelMap:
    """Every channel of a graph as a *node*, grouped into removable *units*.

    Node ``start[g] + c`` is channel ``c`` of channel group ``g`` (the groups of
    :func:`~morphnas.morph.tied.channel_groups`, in their order). ``unit_of[node]`` is its unit;
    ``requires[u]`` the units whose removal unit ``u``'s removal forces (option-A sources);
    ``frozen[u]`` marks units touching a group whose width cannot change (the input, the logits,
    grouped convolutions).
    """

    def __init__(self, graph: ArchGraph) -> None:
        self.graph = graph
        self.shapes: dict[str, Shape] = graph.shapes()
        self.groups: list[ChannelGroup] = channel_groups(graph)
        self.group_of: dict[str, int] = {b: i for i, g in enumerate(self.groups) for b in g.blobs}
        self.slices: dict[str, tuple[int, int]] = in_slices(graph, self.shapes)
        self.start: list[int] = []
        total = 0
        for g in self.groups:
            self.start.append(total)
            total += g.width
        self.n_nodes = total
        self.node_group = torch.tensor([i for i, g in enumerate(self.groups) for _ in range(g.width)], dtype=torch.long)
        self.edges = sorted(graph.edges(), key=lambda e: e.name)
        self._units()
        self._sources()

    # nodes --------------------------------------------------------------------------------
    def nodes(self, group: int, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        hi = self.groups[group].width if hi is None else hi
        return torch.arange(self.start[group] + lo, self.start[group] + hi, dtype=torch.long)

    def reads(self, edge_name: str) -> torch.Tensor:
        """The nodes a layer reads: every channel of its source blob."""
        return self.nodes(self.group_of[self.graph.edge(edge_name).src])

    def writes(self, edge_name: str) -> torch.Tensor:
        """The nodes a layer writes: its slice of its destination blob."""
        offset, width = self.slices[edge_name]
        return self.nodes(self.group_of[self.graph.edge(edge_name).dst], offset, offset + width)

    def group_name(self, group: int) -> str:
        return self.groups[group].blobs[0]

    # units --------------------------------------------------------------------------------
    def _units(self) -> None:
        parent = list(range(self.n_nodes))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        shortcuts: list[tuple[int, int]] = []  # (source node, target node)
        for edge in self.edges:
            role = edge_role(edge, self.shapes)
            src, dst = self.group_of[edge.src], self.group_of[edge.dst]
            offset, _ = self.slices[edge.name]
            if role == "pass" and self.graph.merge(edge.dst) == "concat":
                for c in range(self.groups[src].width):
                    union(self.start[src] + c, self.start[dst] + offset + c)
            elif role == "flatten":
                spread = math.prod(self.shapes[edge.src][1:])
                for c in range(self.groups[src].width):
                    for k in range(spread):
                        union(self.start[src] + c, self.start[dst] + offset + c * spread + k)
            elif role == "shortcut":
                for i, j in enumerate(edge.layer.channel_map):
                    shortcuts.append((self.start[src] + i, self.start[dst] + offset + j))
        roots = sorted({find(n) for n in range(self.n_nodes)})
        index = {r: u for u, r in enumerate(roots)}
        self.unit_of = torch.tensor([index[find(n)] for n in range(self.n_nodes)], dtype=torch.long)
        self.n_units = len(roots)
        frozen_nodes = torch.tensor([bool(self.groups[g].frozen) for g in self.node_group.tolist()], dtype=torch.bool)
        self.frozen = torch.zeros(self.n_units, dtype=torch.bool).index_put_(
            (self.unit_of[frozen_nodes],), torch.tensor(True)
        )
        requires: list[set[int]] = [set() for _ in range(self.n_units)]
        for s, t in shortcuts:
            us, ut = int(self.unit_of[s]), int(self.unit_of[t])
            if us != ut:
                requires[ut].add(us)
        self.requires: list[frozenset[int]] = [frozenset(r) for r in requires]
        dependents: list[set[int]] = [set() for _ in range(self.n_units)]
        for u, req in enumerate(self.requires):
            for v in req:
                dependents[v].add(u)
        self.dependents: list[frozenset[int]] = [frozenset(d) for d in dependents]
        self.members: list[list[int]] = [[] for _ in range(self.n_units)]
        for node, u in enumerate(self.unit_of.tolist()):
            self.members[u].append(node)

    def closure(self, units: set[int], relation: str = "requires") -> set[int]:
        """``units`` and everything they transitively require (or, ``"dependents"``, are required by)."""
        rel = self.requires if relation == "requires" else self.dependents
        out, todo = set(units), list(units)
        while todo:
            for v in rel[todo.pop()]:
                if v not in out:
                    out.add(v)
                    todo.append(v)
        return out

    def units_in(self, group: int) -> list[int]:
        return sorted(set(self.unit_of[self.nodes(group)].tolist()))

    def prunable_groups(self) -> list[int]:
        """Groups with at least two channels and a unit that is not frozen."""
        return [
            i for i, g in enumerate(self.groups)
            if not g.frozen and g.width >= 2 and not bool(self.frozen[self.unit_of[self.nodes(i)]].all())
        ]

    # score and cost sources -----------------------------------------------------------------
    def _sources(self) -> None:
        self.bn_sources: list[tuple[str, torch.Tensor]] = []
        self.row_sources: list[tuple[str, torch.Tensor, bool]] = []
        self.mixes: list[_MixCost] = []
        const_macs = torch.zeros(self.n_nodes, dtype=torch.float64)
        const_params = torch.zeros(self.n_nodes, dtype=torch.float64)
        for edge in self.edges:
            layer, role = edge.layer, edge_role(edge, self.shapes)
            reads = self.reads(edge.name)
            macs, params = layer.channel_cost(self.shapes[edge.src])
            if role == "mix":
                self.mixes.append(_MixCost(edge.name, reads, self.writes(edge.name), macs, params, layer.bias))
                self.row_sources.append((edge.name, self.writes(edge.name), layer.bias))
            else:
                const_macs[reads] += macs
                const_params[reads] += params
            if isinstance(layer, BatchNorm2d):  # its gamma scores the channels (BatchNorm1d too)
                self.bn_sources.append((edge.name, reads))
        self._const = {"macs": const_macs, "params": const_params}
        n_mix = len(self.mixes)
        self._read_matrix = torch.zeros(n_mix, self.n_nodes, dtype=torch.float64)
        self._write_matrix = torch.zeros(n_mix, self.n_nodes, dtype=torch.float64)
        for i, mix in enumerate(self.mixes):
            self._read_matrix[i, mix.reads] = 1
            self._write_matrix[i, mix.writes] = 1
        self._coef = {
            "macs": torch.tensor([m.macs for m in self.mixes], dtype=torch.float64),
            "params": torch.tensor([m.params for m in self.mixes], dtype=torch.float64),
        }
        self._bias = torch.tensor([1.0 if m.bias else 0.0 for m in self.mixes], dtype=torch.float64)
        self.has_bn = torch.zeros(self.n_units, dtype=torch.bool)
        for _, nodes in self.bn_sources:
            self.has_bn[self.unit_of[nodes]] = True
        self.has_rows = torch.zeros(self.n_units, dtype=torch.bool)
        for _, nodes, _ in self.row_sources:
            self.has_rows[self.unit_of[nodes]] = True
        self.scored = self.has_bn | self.has_rows
        lasso = self.has_rows & ~self.has_bn & ~self.frozen  # Group Lasso units: no BN scales them
        self.lasso_sources = [src for src in self.row_sources if bool(lasso[self.unit_of[src[1]]].any())]

    # costs --------------------------------------------------------------------------------
    def node_costs(self, target: str, alive: torch.Tensor | None = None) -> torch.Tensor:
        """Each channel's cost weight: the derivative of the network cost in that channel.

        ``alive`` (float, one entry per node, 1 alive / 0 dead) sets the widths the weights are
        taken at; default all alive (the graph's shapes).
        """
        check_choice(target)
        alive = torch.ones(self.n_nodes, dtype=torch.float64) if alive is None else alive.to(torch.float64)
        a_in = self._read_matrix @ alive
        a_out = self._write_matrix @ alive
        coef = self._coef[target]
        out_share = coef * a_in + (self._bias if target == "params" else 0.0)
        return self._const[target] + self._write_matrix.T @ out_share + self._read_matrix.T @ (coef * a_out)

    def total_cost(self, target: str, alive: torch.Tensor | None = None) -> float:
        """The network's MACs (convolutions and linears) or parameters (BN, biases and per-channel
        P-activations included; a single-slope P-activation's 1 parameter is not) at ``alive``."""
        check_choice(target)
        alive = torch.ones(self.n_nodes, dtype=torch.float64) if alive is None else alive.to(torch.float64)
        a_in, a_out = self._read_matrix @ alive, self._write_matrix @ alive
        total = (self._coef[target] * a_in * a_out).sum() + (self._const[target] * alive).sum()
        if target == "params":
            total = total + (self._bias * a_out).sum()
        return float(total)

    def unit_costs(self, target: str, alive: torch.Tensor | None = None) -> torch.Tensor:
        per_node = self.node_costs(target, alive)
        return torch.zeros(self.n_units, dtype=torch.float64).index_add_(0, self.unit_of, per_node)

    # scores -------------------------------------------------------------------------------
    def scores(self, params: Mapping[str, torch.Tensor], aggregate: str = "max") -> torch.Tensor:
        """Each unit's score (differentiable in ``params``); ``inf`` for unscored units.

        ``params`` maps ``"<layer>.weight"`` (and ``.bias``) to tensors: a weights dict or
        ``dict(model.named_parameters())``.
        """
        check_choice("macs", aggregate)
        # the dtype of the weights, not of a first entry that may be a batch norm's int64 counter
        dtype = next((t.dtype for t in params.values() if t.is_floating_point()), torch.float32)
        scores = torch.full((self.n_units,), math.inf, dtype=dtype)
        if self.bn_sources:
            values = torch.cat([params[f"{bn}.weight"].abs() for bn, _ in self.bn_sources])
            units = torch.cat([self.unit_of[nodes] for _, nodes in self.bn_sources])
            zero = torch.zeros(self.n_units, dtype=values.dtype)
            reduce = "amax" if aggregate == "max" else "sum"
            bn = zero.scatter_reduce(0, units, values, reduce=reduce, include_self=False)
            scores = torch.where(self.has_bn, bn, scores)
        rows_only = self.has_rows & ~self.has_bn & ~self.frozen
        if self.lasso_sources:
            squares, units = [], []
            for name, nodes, bias in self.lasso_sources:
                sq = params[f"{name}.weight"].flatten(1).pow(2).sum(1)
                if bias:
                    sq = sq + params[f"{name}.bias"].pow(2)
                squares.append(sq)
                units.append(self.unit_of[nodes])
            sq = torch.cat(squares)
            lasso = torch.zeros(self.n_units, dtype=sq.dtype).index_add(0, torch.cat(units), sq)
            scores = torch.where(rows_only, (lasso + 1e-24).sqrt(), scores)
        return scores

    def alive_nodes(self, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        """1.0 for channels whose unit is alive (score above ``threshold``, unscored or frozen), else 0.0."""
        alive_units = (scores.detach() > threshold) | ~self.scored | self.frozen
        return alive_units[self.unit_of].to(torch.float64)
