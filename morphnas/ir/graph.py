"""The architecture graph: blobs (tensors) as vertices, layers as edges.

Following section 3.3 of the 2017 paper, a network is a directed acyclic multigraph. A blob
with several in-edges merges them (by addition, by concatenation in a fixed order, or by an
element-wise product that broadcasts a (C, 1, 1) operand, as squeeze-and-excitation does); a blob
with several out-edges hands a copy to each. There is one source (the input) and one sink (the
output). Blob shapes are derived from the input shape, never stored.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch

from morphnas.errors import GraphError
from morphnas.ir.layers import Identity, Layer, Shape, layer_from_dict

FORMAT = "morphnas.arch"
VERSION = 1
MERGES = ("add", "concat", "mul")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Layer names become submodule attributes of the compiled module: no keywords, no nn.Module members.
_RESERVED = frozenset(keyword.kwlist) | frozenset(dir(torch.nn.Module)) | {"code", "graph", "training", "x"}


Chain = list[tuple[str, Layer]]  # new layers in order, each as (name stem, layer spec)


@dataclass(frozen=True)
class Edge:
    name: str
    src: str
    dst: str
    layer: Layer


class ArchGraph:
    """A network as a ``networkx.MultiDiGraph`` of blobs and named layer edges."""

    def __init__(self, input_shape: Shape) -> None:
        self.input_shape = tuple(input_shape)
        self.nx = nx.MultiDiGraph()
        self._ends: dict[str, tuple[str, str]] = {}  # edge name -> (src, dst), for O(1) lookup

    # construction -------------------------------------------------------------------------
    def add_blob(self, name: str, merge: str = "add", order: list[str] | None = None) -> str:
        """Add a blob that sums its in-edges; ``merge="concat"`` concatenates them in ``order`` (edge
        names), ``merge="mul"`` multiplies them (a (C, 1, 1) operand scales every pixel)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise GraphError(f"blob name {name!r} is not an identifier")
        if name in self.nx:
            raise GraphError(f"blob {name!r} already exists")
        if merge not in MERGES:
            raise GraphError(f"blob {name!r}: merge must be one of {', '.join(MERGES)}, got {merge!r}")
        self.nx.add_node(name, merge=merge, order=list(order or []))
        return name

    def add_layer(self, name: str, src: str, dst: str, layer: Layer) -> str:
        if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
            raise GraphError(f"layer name {name!r} is not an identifier or is reserved")
        if name in self._ends:
            raise GraphError(f"layer {name!r} already exists")
        if not isinstance(layer, Layer):
            raise GraphError(f"layer {name!r} is not a layer spec")
        for blob in (src, dst):
            if not isinstance(blob, str) or blob not in self.nx:
                raise GraphError(f"layer {name!r} refers to unknown blob {blob!r}")
        self.nx.add_edge(src, dst, key=name, layer=layer)
        self._ends[name] = (src, dst)
        if self.nx.nodes[dst]["merge"] == "concat" and name not in self.nx.nodes[dst]["order"]:
            self.nx.nodes[dst]["order"].append(name)
        return name

    def remove_layer(self, name: str) -> Edge:
        edge = self.edge(name)
        self.nx.remove_edge(edge.src, edge.dst, key=name)
        del self._ends[name]
        order = self.nx.nodes[edge.dst]["order"]
        if name in order:
            order.remove(name)
        return edge

    def remove_blob(self, name: str) -> None:
        if self.nx.degree(name):
            raise GraphError(f"blob {name!r} still has layers attached")
        self.nx.remove_node(name)

    def remove_dead(self, layers: Iterable[str] = (), blobs: Iterable[str] = ()) -> list[str]:
        """Remove ``layers``, ``blobs`` with their layers, and then whatever that leaves dead.

        A blob other than the input left without an in-layer computes nothing, and one other than
        the output left without a consumer is never read: each goes with its layers, until no such
        blob is left (the graph's dead code, as ``torch.fx.Graph.eliminate_dead_code`` removes
        nodes without users). Returns the removed layers' names in the order they were found.
        When the input or the output blob would go, or lose its last layer, the input no longer
        reaches the output: GraphError, and the graph is left unchanged.
        """
        source, sink = self.source, self.sink
        ins, outs = dict(self.nx.in_degree), dict(self.nx.out_degree)
        removed: dict[str, None] = {}  # an ordered set
        dead: dict[str, None] = {}
        todo = list(blobs)

        def drop(name: str) -> None:
            edge = self.edge(name)
            src, dst = edge.src, edge.dst
            removed[name] = None
            outs[src] -= 1
            ins[dst] -= 1
            for end in (src, dst):
                if end in dead:
                    continue
                if (end == source and outs[end] == 0) or (end == sink and ins[end] == 0):
                    raise GraphError(f"removing layer {name!r} leaves no path from the input to the output")
                if (end != source and ins[end] == 0) or (end != sink and outs[end] == 0):
                    todo.append(end)

        for name in layers:
            if name not in removed:
                drop(name)
        while todo:
            blob = todo.pop()
            if blob in dead:
                continue
            if blob in (source, sink):
                raise GraphError(f"removing blob {blob!r} leaves no path from the input to the output")
            dead[blob] = None
            for _, _, name in [*self.nx.in_edges(blob, keys=True), *self.nx.out_edges(blob, keys=True)]:
                if name not in removed:
                    drop(name)
        for name in removed:
            self.remove_layer(name)
        for blob in dead:
            self.remove_blob(blob)
        return list(removed)

    def set_layer(self, name: str, layer: Layer) -> None:
        edge = self.edge(name)
        self.nx.edges[edge.src, edge.dst, name]["layer"] = layer

    def reorder(self, blob: str, order: list[str]) -> None:
        """Set the concatenation order of concat blob ``blob`` (a permutation of its in-layers)."""
        if blob not in self.nx or self.merge(blob) != "concat":
            raise GraphError(f"blob {blob!r} is not a concat blob")
        names = [k for _, _, k in self.nx.in_edges(blob, keys=True)]
        if sorted(order) != sorted(names):
            raise GraphError(f"blob {blob!r}: order {order} must list exactly its in-layers {sorted(names)}")
        self.nx.nodes[blob]["order"] = list(order)

    # surgery: rewrites that keep an edge's slot in a concat blob (so no channels move) ---------
    def add_chain(self, src: str, dst: str, chain: Chain) -> list[str]:
        """Add ``chain`` from ``src`` to ``dst``, each new blob between two layers named after its layer."""
        names = []
        for i, (stem, layer) in enumerate(chain):
            name = self.fresh_name(stem)
            out = dst if i == len(chain) - 1 else self.add_blob(name)
            self.add_layer(name, src, out, layer)
            names.append(name)
            src = out
        return names

    def replace_edge(self, name: str, chain: Chain) -> list[str]:
        """Replace edge ``name`` (src -> dst) by a chain of layers; the last takes its concat slot."""
        edge, order = self._detach(name)
        names = self.add_chain(edge.src, edge.dst, chain)
        self._take_slot(edge.dst, order, name, names[-1])
        return names

    def insert_after(self, name: str, chain: Chain) -> list[str]:
        """Put ``chain`` on the output of edge ``name``, before it reaches its destination blob."""
        edge, order = self._detach(name)
        mid = self.add_blob(self.fresh_name(f"{name}_out"))
        self.add_layer(name, edge.src, mid, edge.layer)
        names = self.add_chain(mid, edge.dst, chain)
        self._take_slot(edge.dst, order, name, names[-1])
        return names

    def open_edge(self, name: str) -> tuple[str, str]:
        """Remove edge ``name`` and return ``(src, joint)``: a blob that sums whatever is added into it.

        ``joint`` is the edge's destination when that is an add blob; a concat or product
        destination gets a new add blob instead, joined by an identity edge in the old edge's slot.
        """
        edge, order = self._detach(name)
        if self.merge(edge.dst) == "add":
            return edge.src, edge.dst
        joint = self.add_blob(self.fresh_name(f"{name}_sum"))
        self._take_slot(edge.dst, order, name, self.add_chain(joint, edge.dst, [(f"{name}_join", Identity())])[0])
        return edge.src, joint

    def replace_parallel(self, name: str, branches: Chain) -> list[str]:
        """Replace edge ``name`` by parallel edges whose outputs are added (eq. 4's split and joint)."""
        src, joint = self.open_edge(name)
        return [self.add_chain(src, joint, [branch])[0] for branch in branches]

    def rewire_source(self, name: str, src: str, layer: Layer) -> None:
        """Move edge ``name`` to read from ``src`` (with a new spec), keeping its concat slot."""
        edge, order = self._detach(name)
        self.add_layer(name, src, edge.dst, layer)
        self._take_slot(edge.dst, order, name, name)

    def _detach(self, name: str) -> tuple[Edge, list[str] | None]:
        """Remove edge ``name``; return it and its destination's concat order from before."""
        order = self._concat_order(self.edge(name).dst)
        return self.remove_layer(name), order

    def _concat_order(self, blob: str) -> list[str] | None:
        return [e.name for e in self.in_edges(blob)] if self.merge(blob) == "concat" else None

    def _take_slot(self, blob: str, order: list[str] | None, old: str, new: str) -> None:
        if order is not None:
            self.reorder(blob, [new if n == old else n for n in order])

    def fresh_name(self, stem: str) -> str:
        """A name not yet used by any blob or layer: ``stem``, else ``stem_1``, ``stem_2``, ..."""
        name, i = stem, 0
        while name in self._ends or name in self.nx:
            i += 1
            name = f"{stem}_{i}"
        return name

    # queries ------------------------------------------------------------------------------
    def edge(self, name: str) -> Edge:
        if name not in self._ends:
            raise GraphError(f"no layer named {name!r}")
        src, dst = self._ends[name]
        return Edge(name, src, dst, self.nx.edges[src, dst, name]["layer"])

    def layer(self, name: str) -> Layer:
        return self.edge(name).layer

    def edges(self) -> Iterator[Edge]:
        for src, dst, name, layer in self.nx.edges(keys=True, data="layer"):
            yield Edge(name, src, dst, layer)

    def blobs(self) -> list[str]:
        return list(self.nx.nodes)

    def merge(self, blob: str) -> str:
        return self.nx.nodes[blob]["merge"]

    def in_edges(self, blob: str) -> list[Edge]:
        """In-edges of ``blob``, in concatenation order for a concat blob."""
        edges = [self.edge(k) for _, _, k in self.nx.in_edges(blob, keys=True)]
        if self.merge(blob) == "concat":
            order = self.nx.nodes[blob]["order"]
            edges.sort(key=lambda e: order.index(e.name))
        return edges

    def out_edges(self, blob: str) -> list[Edge]:
        return [self.edge(k) for _, _, k in self.nx.out_edges(blob, keys=True)]

    @property
    def source(self) -> str:
        return self._end(self.nx.in_degree, "source", "in-edges")

    @property
    def sink(self) -> str:
        return self._end(self.nx.out_degree, "sink", "out-edges")

    def _end(self, degree: Any, what: str, edges: str) -> str:
        ends = [n for n, d in degree if d == 0]
        if len(ends) != 1:
            raise GraphError(f"the graph must have exactly one {what} (blob without {edges}), found {ends}")
        return ends[0]

    def topological_blobs(self) -> list[str]:
        try:
            return list(nx.topological_sort(self.nx))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.nx)
            raise GraphError(f"the graph has a cycle through layer {cycle[0][2]!r}") from None

    def operands(self, blob: str) -> list[Edge]:
        """In-edges of ``blob`` in operand order: concatenation order, else by layer name."""
        edges = self.in_edges(blob)
        return edges if self.merge(blob) == "concat" else sorted(edges, key=lambda e: e.name)

    def program_blobs(self) -> list[str]:
        """Blobs in program order: a topological order that does not depend on insertion order.

        It is the order in which a demand-driven code generator emits values: walking back
        from the sink, a blob comes right after everything its operands need, and its operands
        are visited in :meth:`operands` order (concatenation order, else by layer name). So a
        branch comes out whole before its sibling (a block's residual path, then its projection
        shortcut), and ties between parallel branches are broken by the names of the layers
        where they join, not by when a blob or layer was added.

        Why not ``nx.lexicographical_topological_sort`` keyed on blob names: it picks greedily
        among the blobs that are ready, so parallel branches interleave, and a blob that a morph
        adds to one branch, if its name sorts after a blob of another branch, can move existing
        blobs of both relative to each other. Here a morph that rewrites a layer into a chain or
        into parallel layers (deepen, insert_pact, insert_bn, branch, split_identity, ...)
        leaves the relative order of the existing blobs as it was, as long as the layer that
        now feeds the join sorts among its siblings where the old one did (morphs name new
        layers after the one they replace, and a concatenation keeps its slot).
        """
        self.topological_blobs()  # a cycle raises GraphError here
        done: set[str] = set()
        order: list[str] = []
        for end in sorted(b for b, d in self.nx.out_degree if d == 0):
            stack = [(end, iter(self.operands(end)))]
            while stack:
                blob, pending = stack[-1]
                for edge in pending:
                    if edge.src not in done:
                        stack.append((edge.src, iter(self.operands(edge.src))))
                        break
                else:
                    stack.pop()
                    done.add(blob)
                    order.append(blob)
        return order

    def program_order(self) -> dict[str, int]:
        """An index for every blob and every layer name, in program order.

        The program is the straight-line one :func:`~morphnas.ir.compile.compile_graph` runs:
        blobs in :meth:`program_blobs` order, each preceded by its in-layers in operand order.
        Sorting sites (layer or blob names) by these indices lists them from the input to the
        output, whatever order the graph was built or morphed in.

        A name used by a layer and a blob alike (the seeds name a blob after the layer that
        makes it) maps to the layer's index, which for a blob with that one in-layer is the
        blob's index minus one, so either reading sorts the same. To sort blobs alone, index
        :meth:`program_blobs`.
        """
        order: dict[str, int] = {}
        step = 0
        for blob in self.program_blobs():
            for edge in self.operands(blob):
                order[edge.name] = step
                step += 1
            order.setdefault(blob, step)
            step += 1
        return order

    def shapes(self) -> dict[str, Shape]:
        """Every blob's shape, inferred from the input shape; validates the graph on the way."""
        order = self.topological_blobs()
        source, sink = self.source, self.sink
        shapes: dict[str, Shape] = {source: self.input_shape}
        for blob in order:
            if blob == source:
                continue
            edges = self.in_edges(blob)
            outs = []
            for e in edges:
                try:
                    outs.append(tuple(e.layer.output_shape(shapes[e.src])))
                except GraphError as err:
                    raise GraphError(f"layer {e.name!r} ({e.src} -> {e.dst}): {err}") from None
            shapes[blob] = self._merged(blob, edges, outs)
        if sink not in shapes:  # pragma: no cover - a DAG with one source reaches its sink
            raise GraphError(f"the sink {sink!r} is not reachable from the source")
        return shapes

    def _merged(self, blob: str, edges: list[Edge], outs: list[Shape]) -> Shape:
        if self.merge(blob) == "add":
            for e, shape in zip(edges[1:], outs[1:], strict=True):
                if shape != outs[0]:
                    raise GraphError(
                        f"blob {blob!r} adds layer {edges[0].name!r} of shape {outs[0]} and layer "
                        f"{e.name!r} of shape {shape}"
                    )
            return outs[0]
        if self.merge(blob) == "mul":
            full = max(outs, key=lambda s: (len(s), s[1:]))  # (C, H, W) over a (C, 1, 1) scale
            for e, shape in zip(edges, outs, strict=True):
                if shape != full and not (len(full) == 3 and shape == (full[0], 1, 1)):
                    raise GraphError(f"blob {blob!r} multiplies shape {full} by layer {e.name!r} of shape {shape}")
            return full
        if set(self.nx.nodes[blob]["order"]) != {e.name for e in edges}:
            raise GraphError(f"blob {blob!r}: concat order must list exactly its in-layers")
        if any(len(s) != len(outs[0]) or s[1:] != outs[0][1:] for s in outs):
            raise GraphError(f"blob {blob!r} concatenates incompatible shapes {outs}")
        return (sum(s[0] for s in outs), *outs[0][1:])

    def validate(self) -> ArchGraph:
        self.shapes()
        return self

    def copy(self) -> ArchGraph:
        """A structural copy; layer specs are frozen, so they are shared."""
        new = ArchGraph(self.input_shape)
        for blob in self.blobs():
            new.add_blob(blob, self.merge(blob), self._concat_order(blob))
        for edge in self.edges():
            new.add_layer(edge.name, edge.src, edge.dst, edge.layer)
        return new

    # JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        blobs = []
        for name, data in self.nx.nodes(data=True):
            entry: dict[str, Any] = {"name": name}
            if data["merge"] == "concat":
                entry.update(merge="concat", order=list(data["order"]))
            elif data["merge"] == "mul":
                entry.update(merge="mul")
            blobs.append(entry)
        layers = [{"name": e.name, "src": e.src, "dst": e.dst, **e.layer.to_dict()} for e in self.edges()]
        return {
            "format": FORMAT,
            "version": VERSION,
            "input_shape": list(self.input_shape),
            "blobs": blobs,
            "layers": layers,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @staticmethod
    def from_json(data: Any) -> ArchGraph:
        """Parse and validate; every malformation raises GraphError naming what is wrong."""
        if not isinstance(data, dict):
            raise GraphError("an architecture must be a JSON object")
        if data.get("format") != FORMAT:
            raise GraphError(f"not a morphnas architecture (format {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise GraphError(f"unsupported architecture version {data.get('version')!r} (expected {VERSION})")
        missing = {"input_shape", "blobs", "layers"} - set(data)
        if missing:
            raise GraphError(f"architecture lacks {', '.join(sorted(missing))}")
        shape = data["input_shape"]
        if not isinstance(shape, list) or not shape or any(
            isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape
        ):
            raise GraphError(f"input_shape must be a list of positive integers, got {shape!r}")
        if not isinstance(data["blobs"], list) or not isinstance(data["layers"], list):
            raise GraphError("blobs and layers must be lists")
        graph = ArchGraph(tuple(shape))
        for blob in data["blobs"]:
            if not isinstance(blob, dict) or "name" not in blob or set(blob) - {"name", "merge", "order"}:
                raise GraphError(f"malformed blob entry {blob!r}")
            order = blob.get("order", [])
            if not isinstance(order, list) or not all(isinstance(o, str) for o in order):
                raise GraphError(f"blob {blob['name']!r}: order must be a list of layer names")
            graph.add_blob(blob["name"], blob.get("merge", "add"), order)
        for entry in data["layers"]:
            if not isinstance(entry, dict):
                raise GraphError(f"malformed layer entry {entry!r}")
            fields = {k: v for k, v in entry.items() if k not in ("name", "src", "dst")}
            name = entry.get("name")
            try:
                layer = layer_from_dict(fields)
            except GraphError as err:
                raise GraphError(f"layer {name!r}: {err}") from None
            graph.add_layer(name, entry.get("src"), entry.get("dst"), layer)
        return graph.validate()

    @staticmethod
    def loads(text: str) -> ArchGraph:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GraphError(f"malformed JSON: {err}") from None
        return ArchGraph.from_json(data)

    def __repr__(self) -> str:
        return f"ArchGraph({len(self.nx)} blobs, {len(self._ends)} layers, input {self.input_shape})"
