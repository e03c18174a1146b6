"""TYPE-II morph (eq. 4 of the 2017 paper) and kernel growth (section 3.4's zero padding).

``branch`` splits a conv ``G`` into two parallel convs with ``F1 + F2 = G``: the source blob is
copied to both, their outputs are added. ``F1 = R`` is random and ``F2 = G - R``: the branches
start different, so they learn different filters (halves ``G/2 + G/2`` would get identical
gradients and stay tied). Kernels of different sizes are made compatible by zero padding; each
branch is a single zero-padded conv, so the sum is exact at the borders too.
"""

from __future__ import annotations

from typing import Any

import torch

from morphnas.errors import MorphError
from morphnas.ir import ArchGraph, Conv2d, Weights
from morphnas.modules.kernels import pad_kernel, split_parallel
from morphnas.morph.base import MorphContext, MorphResult, register
from morphnas.morph.sites import (
    conv_edges,
    float_dtype,
    graph_errors_as,
    kernel_pair,
    layer_state,
    morph_result,
    parse_params,
    site_edge,
    without,
)


def _branch_defaults(graph: ArchGraph, site: str, gen: torch.Generator) -> dict[str, Any]:
    k = graph.layer(site).kernel_size
    return {"kernels": [k, k]}


def _branch_layer(conv: Conv2d, kernel: int) -> Conv2d:
    """G with kernel ``kernel``: centred on G's taps (padding shifted), same stride, dilation and output grid."""
    if (kernel - conv.kernel_size) % 2:
        raise MorphError(f"branch: kernel {kernel} and G's {conv.kernel_size} differ by an odd number: no centring")
    padding = conv.padding + conv.dilation * (kernel - conv.kernel_size) // 2
    if padding < 0:
        raise MorphError(f"branch: a {kernel}x{kernel} branch needs negative padding to keep G's output grid")
    return conv.replace(kernel_size=kernel, padding=padding)  # type: ignore[return-value]


def _random_on_scale(reference: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Normal noise on the scale of ``reference`` (or unit fan-in scale when it is all zero)."""
    std = reference.std().item() if reference.numel() > 1 else 0.0
    if not std > 0:
        std = (shape[1] * shape[2] * shape[3]) ** -0.5 if len(shape) == 4 else 1.0
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


@register("branch", sites=conv_edges, default_params=_branch_defaults)
def branch(graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext) -> MorphResult:
    """TYPE-II (eq. 4): conv G becomes parallel convs F1 + F2 = G (split at the source, add at the sink).

    Params: ``kernels`` [K1, K2] (default G's kernel twice). The branch with the smaller kernel
    is random (R); the other is G̃ - R̃ (zero-padded, section 3.4), so it carries G's outer taps
    and needs a kernel at least G's. G's bias is split the same way. Into an add blob the
    branches go directly; into a concat blob through a new sum blob in G's slot.
    """
    p = parse_params(params, {"kernels": None}, "branch")
    edge = site_edge(graph, site, (Conv2d,))
    conv: Conv2d = edge.layer  # type: ignore[assignment]
    k1, k2 = kernel_pair(p["kernels"] or [conv.kernel_size] * 2, "branch")
    small, large = sorted((k1, k2))
    if large < conv.kernel_size:
        raise MorphError(f"branch: one branch must hold G's {conv.kernel_size}x{conv.kernel_size} taps, got {[k1, k2]}")
    layers = (_branch_layer(conv, k1), _branch_layer(conv, k2))
    g = weights[f"{site}.weight"].to(torch.float64)
    r = _random_on_scale(g, (conv.out_channels, conv.in_channels, small, small), ctx.generator)
    kernels = split_parallel(g, r, (k1, k2))  # F1 = R when F1 is the smaller (or equal) branch
    child = graph.copy()
    with graph_errors_as("branch"):
        names = child.replace_parallel(site, [(f"{site}_b1", layers[0]), (f"{site}_b2", layers[1])])
    dtype = float_dtype(weights)
    biases: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})
    if conv.bias:
        gb = weights[f"{site}.bias"].to(torch.float64)
        rb = _random_on_scale(gb, tuple(gb.shape), ctx.generator)
        biases = ({"bias": rb}, {"bias": gb - rb}) if k1 <= k2 else ({"bias": gb - rb}, {"bias": rb})
    out = without(weights, [site])
    for name, layer, kernel, bias in zip(names, layers, kernels, biases, strict=True):
        out.update(layer_state(name, layer, dtype, weight=kernel, **bias))
    return morph_result("branch", child, out, site, params, names, note=f"F1 {k1}x{k1}, F2 {k2}x{k2}")


def _grow_defaults(graph: ArchGraph, site: str, gen: torch.Generator) -> dict[str, Any]:
    return {"kernel": graph.layer(site).kernel_size + 2}


@register("grow_kernel", sites=conv_edges, default_params=_grow_defaults)
def grow_kernel(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Kernel size (section 3.4): zero-pad conv ``site`` from k to ``kernel`` = k + 2m, padding + m
    (+ m x dilation: a dilated conv's new taps are dilation pixels apart too).

    Exact at the borders (a zero tap reads padding or a pixel, both times zero) and for any
    stride (the output grid does not move). Params: ``kernel`` (default k + 2). The grown
    weight is listed in ``new_weights``: its outer taps are new parameters.
    """
    p = parse_params(params, {"kernel": None}, "grow_kernel")
    conv: Conv2d = site_edge(graph, site, (Conv2d,)).layer  # type: ignore[assignment]
    kernel = p["kernel"] if p["kernel"] is not None else conv.kernel_size + 2
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel <= conv.kernel_size:
        raise MorphError(f"grow_kernel: kernel must be an integer above {conv.kernel_size}, got {kernel!r}")
    if (kernel - conv.kernel_size) % 2:
        raise MorphError(f"grow_kernel: kernel must be {conv.kernel_size} plus an even number, got {kernel}")
    child = graph.copy()
    padding = conv.padding + conv.dilation * (kernel - conv.kernel_size) // 2
    child.set_layer(site, conv.replace(kernel_size=kernel, padding=padding))
    key = f"{site}.weight"
    out = {**weights, key: pad_kernel(weights[key], kernel)}
    note = f"{conv.kernel_size}x{conv.kernel_size} -> {kernel}x{kernel}"
    res = morph_result("grow_kernel", child, out, site, params, [], note=note)
    res.new_weights = [key]
    return res
