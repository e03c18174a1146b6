"""Cost of a network: learnable parameters, stored size, and multiply-accumulates."""

from __future__ import annotations

from morphnas.ir.compile import compile_graph
from morphnas.ir.graph import ArchGraph


def count_params(graph: ArchGraph) -> int:
    """Learnable parameters (the PyTorch convention)."""
    return sum(p.numel() for p in compile_graph(graph).parameters())


def size_mb(graph: ArchGraph) -> float:
    """The 2017 paper's "#Params (MB)": every stored float, BN running statistics included, x 4 / 2^20."""
    state = compile_graph(graph).state_dict()
    return sum(t.numel() for t in state.values() if t.is_floating_point()) * 4 / 2**20


def count_macs(graph: ArchGraph) -> int:
    """Multiply-accumulates of one image, each layer's ``macs`` (convs and linears, biases not counted),
    computed from the shapes: what ``torch.utils.flop_counter`` counts, halved, without its import of
    ``torch._dynamo``."""
    shapes = graph.shapes()
    return sum(edge.layer.macs(shapes[edge.src]) for edge in graph.edges())


def cost(graph: ArchGraph) -> dict[str, float | int]:
    """``params``, ``size_mb`` and ``macs`` of one graph, compiled once."""
    module = compile_graph(graph)
    state = module.state_dict()
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "size_mb": sum(t.numel() for t in state.values() if t.is_floating_point()) * 4 / 2**20,
        "macs": count_macs(graph),
    }
