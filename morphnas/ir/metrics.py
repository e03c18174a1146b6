"""Cost of a network: learnable parameters, stored size, and multiply-accumulates."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

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
    """Multiply-accumulates of one image: ``torch.utils.flop_counter`` FLOPs / 2 (convs and linears)."""
    module = compile_graph(graph).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *graph.input_shape))
    return counter.get_total_flops() // 2


def cost(graph: ArchGraph) -> dict[str, float | int]:
    """``params``, ``size_mb`` and ``macs`` of one graph, compiled once."""
    module = compile_graph(graph).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *graph.input_shape))
    state = module.state_dict()
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "size_mb": sum(t.numel() for t in state.values() if t.is_floating_point()) * 4 / 2**20,
        "macs": counter.get_total_flops() // 2,
    }
