"""TYPE-I morphs (eq. 2 of the 2017 paper): deepen a conv or linear layer; insert a P-activation or a BN.

``deepen`` turns ``G`` into ``F2 ∘ F1`` with ``F2 ⊛ F1 = G̃`` (G zero-padded to K1 + K2 - 1). In a
network the pair becomes ``F1 -> BN (calibrated identity) -> P-act (a = 1, eq. 8) -> F2`` so that
the child can learn a nonlinearity there (section 3.7). Two initialisations:

- ``identity``: one factor carries G (zero-padded to its kernel, at G's dilation), the other is
  a centred delta, which with zero padding is exactly the identity: exact, borders included.
- ``decompose`` (NetMorph): the factor with fewer parameters is random, the other is solved by
  least squares. Exact when eq. 3 holds and one factor is 1x1; two stacked k > 1 convs with zero
  padding equal one conv only away from the borders, so such a result is marked approximate.
  A dilated G is refused: eq. 2 composes taps that are next to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from morphnas.errors import MorphError
from morphnas.ir import ArchGraph, BatchNorm2d, Chain, Conv2d, Edge, Layer, Linear, ParametricActivation, Weights
from morphnas.modules.kernels import compose, delta, pad_kernel
from morphnas.modules.solver import solve_factor
from morphnas.morph.base import MorphContext, MorphResult, register
from morphnas.morph.sites import (
    batchnorm,
    calibrate,
    conv_edges,
    float_dtype,
    graph_errors_as,
    identity_bn_state,
    kernel_pair,
    layer_state,
    linear_edges,
    morph_result,
    pact_state,
    parse_params,
    site_edge,
    without,
)

EXACT_RESIDUAL = 1e-9  # relative residual of eq. 2 (solved in float64) below which it holds


# factorisations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """G's kernel, stride, padding and dilation (a linear layer is a 1x1 conv on a 1x1 image)."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1

    @staticmethod
    def of(layer: Layer) -> Geometry:
        if isinstance(layer, Conv2d):
            return Geometry(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        return Geometry(1, 1, 0)

    def padding_for(self, size: int) -> int:
        """The padding that keeps G's output grid for G zero-padded to ``size`` (taps ``dilation`` apart)."""
        return self.padding + self.dilation * (size - self.kernel) // 2


@dataclass(frozen=True)
class Factors:
    f1: torch.Tensor  # (Cl, Ci, k1, k1), float64
    f2: torch.Tensor  # (Cj, Cl, k2, k2), float64
    strides: tuple[int, int]
    paddings: tuple[int, int]
    exact: bool
    note: str
    dilations: tuple[int, int] = (1, 1)


def _check_pad(geo: Geometry, size: int, what: str) -> None:
    if size < geo.kernel or (size - geo.kernel) % 2:
        raise MorphError(f"deepen: {what} kernel {size} cannot hold G's {geo.kernel}x{geo.kernel} kernel centred")


def identity_factors(g: torch.Tensor, geo: Geometry, kernels: tuple[int, int], carrier: str) -> Factors:
    """One factor is G (zero-padded), the other a centred delta: exact, borders included."""
    k1, k2 = kernels
    cj, ci = g.shape[:2]
    if carrier == "first":
        _check_pad(geo, k1, "the first")
        if k2 % 2 == 0:
            raise MorphError(f"deepen: an identity factor needs an odd kernel, got {k2}")
        return Factors(pad_kernel(g, k1), delta(cj, cj, k2), (geo.stride, 1), (geo.padding_for(k1), k2 // 2), True,
                       "F1 carries G, F2 is the identity", (geo.dilation, 1))
    _check_pad(geo, k2, "the second")
    if k1 % 2 == 0:
        raise MorphError(f"deepen: an identity factor needs an odd kernel, got {k1}")
    return Factors(delta(ci, ci, k1), pad_kernel(g, k2), (1, geo.stride), (k1 // 2, geo.padding_for(k2)), True,
                   "F1 is the identity, F2 carries G", (1, geo.dilation))


def random_factor(c_out: int, c_in: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """A random (c_out, c_in, k, k) filter whose matrix (c_out x c_in k^2) has orthonormal rows or columns.

    Well conditioned, so the factor solved against it stays on G's scale: a square Gaussian
    factor (condition number ~ its size) made the solved one ~500x G's norm, and float32
    rounding of it broke exactness (1e-4 on a 256-wide MLP).
    """
    m = torch.randn(c_out, c_in * k * k, generator=gen, dtype=torch.float64)
    q = torch.linalg.qr(m).Q if c_out >= c_in * k * k else torch.linalg.qr(m.T).Q.T
    return q.reshape(c_out, c_in, k, k)


def decompose_factors(
    g: torch.Tensor, geo: Geometry, kernels: tuple[int, int], width: int, gen: torch.Generator
) -> Factors:
    """NetMorph: randomise the smaller factor, solve the larger by least squares (eqs. 2-3)."""
    k1, k2 = kernels
    size = k1 + k2 - 1
    if geo.dilation > 1:
        raise MorphError(f"deepen: init='decompose' composes kernels tap next to tap (eq. 2); G has dilation "
                         f"{geo.dilation} (init='identity' keeps it)")
    _check_pad(geo, size, "the combined (K1 + K2 - 1)")
    cj, ci = g.shape[:2]
    target = pad_kernel(g, size)
    if width * ci * k1 * k1 <= cj * width * k2 * k2:
        f1 = random_factor(width, ci, k1, gen)
        f2 = solve_factor(None, f1, target, cj, width, k2)
    else:
        f2 = random_factor(cj, width, k2, gen)
        f1 = solve_factor(f2, None, target, width, ci, k1)
    residual = ((compose(f2, f1) - target).norm() / target.norm().clamp_min(1e-300)).item()
    total = geo.padding_for(size)
    p1 = 0 if k1 == 1 else (total if k2 == 1 else min((k1 - 1) // 2, total))
    strides = (geo.stride, 1) if k2 == 1 else (1, geo.stride)
    eq3 = max(width * ci * k1 * k1, cj * width * k2 * k2) >= cj * ci * size * size
    note = f"eq. 2 relative residual {residual:.1e}, eq. 3 {'holds' if eq3 else 'fails'}"
    exact = residual <= EXACT_RESIDUAL and min(k1, k2) == 1
    if min(k1, k2) > 1:
        note += "; both factors are wider than 1x1: with zero padding the pair equals G only away from the borders"
    elif not exact:
        note += "; the factorisation is not exact"
    return Factors(f1, f2, strides, (p1, total - p1), exact, note)


# deepen ----------------------------------------------------------------------------------------
def _deepen_sites(graph: ArchGraph) -> list[str]:
    return conv_edges(graph) + linear_edges(graph)


def _default_kernels(layer: Layer, init: str) -> list[int]:
    """A linear layer: [1, 1]; identity init: an identity F2 as wide as G when G's kernel is odd."""
    k = Geometry.of(layer).kernel
    return [k, k] if init == "identity" and k % 2 else [k, 1]


def _deepen_defaults(graph: ArchGraph, site: str, gen: torch.Generator) -> dict[str, Any]:
    return {"init": "identity", "kernels": _default_kernels(graph.layer(site), "identity")}


def eq3_width(c_out: int, c_in: int, kernels: tuple[int, int]) -> int:
    """The smallest F1 width >= max(C_in, C_out) for which eq. 3 holds."""
    k1, k2 = kernels
    size = k1 + k2 - 1
    needed = -(-c_out * c_in * size * size // max(c_in * k1 * k1, c_out * k2 * k2))
    return max(c_in, c_out, needed)


def _factors(edge: Edge, weights: Weights, p: dict[str, Any], gen: torch.Generator) -> Factors:
    image = isinstance(edge.layer, Conv2d)
    g = weights[f"{edge.name}.weight"].to(torch.float64)
    g = g if image else g[:, :, None, None]
    geo = Geometry.of(edge.layer)
    kernels = kernel_pair(p["kernels"] or _default_kernels(edge.layer, p["init"]), "deepen")
    if not image and kernels != (1, 1):
        raise MorphError(f"deepen: {edge.name!r} is a linear layer; kernels must be [1, 1]")
    if p["init"] == "identity":
        if p["carrier"] not in ("first", "second"):
            raise MorphError(f"deepen: carrier must be 'first' or 'second', got {p['carrier']!r}")
        if p["width"] is not None:
            raise MorphError("deepen: width applies to init='decompose' only (identity keeps G's width)")
        return identity_factors(g, geo, kernels, p["carrier"])
    if p["init"] == "decompose":
        width = p["width"] if p["width"] is not None else eq3_width(g.shape[0], g.shape[1], kernels)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise MorphError(f"deepen: width must be a positive integer, got {width!r}")
        return decompose_factors(g, geo, kernels, width, gen)
    raise MorphError(f"deepen: init must be 'identity' or 'decompose', got {p['init']!r}")


def _factor_layers(edge: Edge, f: Factors) -> tuple[Layer, Layer]:
    (cl, ci), cj = f.f1.shape[:2], f.f2.shape[0]
    if isinstance(edge.layer, Linear):
        return Linear(ci, cl, bias=False), Linear(cl, cj, bias=edge.layer.bias)
    (k1, k2), (s1, s2), (p1, p2), (d1, d2) = (f.f1.shape[-1], f.f2.shape[-1]), f.strides, f.paddings, f.dilations
    return (Conv2d(ci, cl, k1, s1, p1, bias=False, dilation=d1),
            Conv2d(cl, cj, k2, s2, p2, bias=edge.layer.bias, dilation=d2))


def _middle(width: int, image: bool, p: dict[str, Any], name: str) -> Chain:
    """What sits between the factors: a BN and a P-activation (section 3.7), each optional."""
    chain: Chain = []
    if p["batchnorm"]:
        chain.append((f"{name}_bn", batchnorm(width, image)))
    if p["activation"] is not None:
        chain.append((f"{name}_act", ParametricActivation(p["activation"])))
    return chain


def new_layer_weights(graph: ArchGraph, names: list[str], dtype: torch.dtype) -> Weights:
    """Identity states for new BNs (mean 0, variance 1) and P-activations (a = 1)."""
    out: Weights = {}
    for name in names:
        layer = graph.layer(name)
        if isinstance(layer, BatchNorm2d):
            out.update(identity_bn_state(name, layer, dtype))
        elif isinstance(layer, ParametricActivation):
            out.update(pact_state(name, layer, dtype))
    return out


def new_bns(graph: ArchGraph, names: list[str]) -> list[str]:
    return [n for n in names if isinstance(graph.layer(n), BatchNorm2d)]


@register("deepen", sites=_deepen_sites, default_params=_deepen_defaults)
def deepen(graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext) -> MorphResult:
    """TYPE-I (eq. 2): a conv or linear G becomes F1 -> BN -> P-act -> F2 with F2 ⊛ F1 = G̃.

    Params: ``init`` ("identity" | "decompose"), ``kernels`` [K1, K2] (conv only), ``carrier``
    ("first" | "second": which factor carries G under identity init), ``width`` (F1's outputs,
    decompose only; default the smallest >= max(C_in, C_out) satisfying eq. 3), ``batchnorm``
    (bool), ``activation`` (P-act kind or None). G's bias goes to F2. The stride stays with G
    under identity init; under decompose it goes to the factor that is not 1x1 (the first when
    F2 is 1x1).
    """
    defaults = {"init": "identity", "kernels": None, "carrier": "first", "width": None,
                "batchnorm": True, "activation": "relu"}
    p = parse_params(params, defaults, "deepen")
    edge = site_edge(graph, site, (Conv2d, Linear))
    f = _factors(edge, weights, p, ctx.generator)
    dtype = float_dtype(weights)
    child = graph.copy()
    image = isinstance(edge.layer, Conv2d)
    with graph_errors_as("deepen"):
        first, second = _factor_layers(edge, f)
        chain = [(f"{site}_a", first), *_middle(f.f1.shape[0], image, p, f"{site}_a"), (f"{site}_b", second)]
        names = child.replace_edge(site, chain)
    w1, w2 = (f.f1, f.f2) if image else (f.f1[:, :, 0, 0], f.f2[:, :, 0, 0])
    new = layer_state(names[0], first, dtype, weight=w1)
    new.update(new_layer_weights(child, names[1:-1], dtype))
    bias = {"bias": weights[f"{site}.bias"]} if edge.layer.bias else {}
    new.update(layer_state(names[-1], second, dtype, weight=w2, **bias))
    out = calibrate(child, {**without(weights, [site]), **new}, new_bns(child, names), ctx.calibration)
    return morph_result("deepen", child, out, site, params, names, exact=f.exact, note=f.note)


# insert a P-activation or a BN -----------------------------------------------------------------
def _all_edges(graph: ArchGraph) -> list[str]:
    return [e.name for e in graph.edges()]


@register("insert_pact", sites=_all_edges, default_params=lambda g, s, r: {"kind": "relu"})
def insert_pact(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Eq. 8: a P-activation ``(1 - a)·φ + a·x`` with ``a = 1`` (the identity) after layer ``site``,
    any layer, a grouped or depthwise convolution too.

    Params: ``kind`` (the activation φ, default relu).
    """
    p = parse_params(params, {"kind": "relu"}, "insert_pact")
    site_edge(graph, site, (Layer,), grouped=True)  # after a grouped conv too: its output is a blob like any
    child = graph.copy()
    with graph_errors_as("insert_pact"):
        layer = ParametricActivation(p["kind"])
        names = child.insert_after(site, [(f"{site}_act", layer)])
    out = {**weights, **pact_state(names[0], layer, float_dtype(weights))}
    return morph_result("insert_pact", child, out, site, params, names)


def _bn_sites(graph: ArchGraph) -> list[str]:
    return conv_edges(graph) + linear_edges(graph)


@register("insert_bn", sites=_bn_sites)
def insert_bn(graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext) -> MorphResult:
    """A batch norm after conv or linear ``site`` that is the identity in eval mode (section 3.7).

    With ``ctx.calibration`` it takes the statistics of the layer's output on that batch
    (gamma = sqrt(var + eps), beta = mean: close to the identity in train mode too); without,
    mean 0 and variance 1 (exact in eval mode only). No params.
    """
    parse_params(params, {}, "insert_bn")
    edge = site_edge(graph, site, (Conv2d, Linear))
    child = graph.copy()
    image = isinstance(edge.layer, Conv2d)
    features = edge.layer.out_channels if image else edge.layer.out_features
    names = child.insert_after(site, [(f"{site}_bn", batchnorm(features, image))])
    out = {**weights, **new_layer_weights(child, names, float_dtype(weights))}
    out = calibrate(child, out, names, ctx.calibration)
    note = "calibrated" if ctx.calibration is not None else "statistics 0/1: the identity in eval mode only"
    return morph_result("insert_bn", child, out, site, params, names, note=note)
