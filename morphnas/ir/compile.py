"""Compile an architecture graph to a ``torch.fx.GraphModule`` with a straight-line forward.

Each layer edge becomes a submodule named after the edge, so the compiled module's
``state_dict`` is exactly the graph's flat weights dict (``"<edge>.<param>"``). The generated
``forward`` has no loop over the graph: it works with ``torch.compile`` and ``torch.export``.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from morphnas.errors import GraphError
from morphnas.ir.graph import ArchGraph
from morphnas.ir.layers import Identity

Weights = dict[str, torch.Tensor]


def compile_graph(graph: ArchGraph, weights: Weights | None = None) -> fx.GraphModule:
    """Build the module; load ``weights`` strictly when given (else default initialisation).

    The module's ``state_dict`` is exactly the graph's flat weights dict:

    >>> import torch
    >>> from morphnas.ir import cnn, compile_graph, init_weights
    >>> graph = cnn((1, 8, 8), num_classes=3)
    >>> weights = init_weights(graph)
    >>> model = compile_graph(graph, weights).eval()
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 3])
    >>> sorted(model.state_dict()) == sorted(weights)
    True
    """
    graph.validate()
    root = nn.Module()
    fx_graph = fx.Graph()
    values: dict[str, fx.Node] = {}
    for blob in graph.topological_blobs():
        if blob == graph.source:
            values[blob] = fx_graph.placeholder("x")
            continue
        inputs = [_emit_edge(fx_graph, root, edge, values[edge.src]) for edge in graph.in_edges(blob)]
        if len(inputs) == 1:
            values[blob] = inputs[0]
        elif graph.merge(blob) == "concat":
            values[blob] = fx_graph.call_function(torch.cat, (inputs, 1))
        else:
            join = operator.mul if graph.merge(blob) == "mul" else operator.add
            total = inputs[0]
            for other in inputs[1:]:
                total = fx_graph.call_function(join, (total, other))
            values[blob] = total
    fx_graph.output(values[graph.sink])
    module = fx.GraphModule(root, fx_graph, class_name="MorphnasNet")
    if weights is not None:
        dtype = next((w.dtype for w in weights.values() if w.is_floating_point()), None)
        if dtype is not None:
            module.to(dtype)  # load float64 weights without a round trip through float32
        load_weights(module, weights)
    return module


def _emit_edge(fx_graph: fx.Graph, root: nn.Module, edge, value: fx.Node) -> fx.Node:
    layer = edge.layer
    if isinstance(layer, Identity):
        if layer.scale == 1.0:
            return value
        return fx_graph.call_function(operator.mul, (value, float(layer.scale)))
    root.add_module(edge.name, layer.build())
    return fx_graph.call_module(edge.name, (value,))


def load_weights(module: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into ``module``; missing, unexpected or misshapen entries raise GraphError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise GraphError(f"weights do not fit the graph: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in own.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise GraphError(f"weight {key!r} has shape {tuple(weights[key].shape)}, expected {tuple(tensor.shape)}")
    module.load_state_dict(weights)


def init_weights(graph: ArchGraph, seed: int = 0) -> Weights:
    """Default PyTorch initialisation of every layer, reproducible from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = compile_graph(graph)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` (over all elements; a ``want`` of all zeros divides by 1):
    how far a compiled network's outputs are from a reference's, the import's and the verifier's
    measure."""
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)
