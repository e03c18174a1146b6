"""The 2017 paper's ResNet experiment morphs (section 4.1, Figs. 3-4) and new skip connections.

- ``split_identity``: an identity shortcut of scale s becomes two parallel ones of scale s/2.
- ``identity_to_conv_path``: an identity of scale s becomes conv k1 -> BN -> P-act -> conv k2 -> BN
  (morph<k1>c<k2>), initialised to the identity: conv1 a centred delta, conv2 s times one (a
  centred delta with zero padding is exactly the identity, borders included), BNs calibrated
  identities, P-act a = 1 (eq. 8). Every new parameter is on the path, so all of them learn.
- ``add_skip``: a zero-initialised 1x1 conv (or linear) from an earlier blob into a later add blob.
- ``concat_skip``: a later blob becomes the concatenation of itself and an earlier blob; its
  consumers read the appended channels with zero weights.
- :func:`morph_resnet_variant` builds Table 1's morph<k1>c<k2>[_2branch][_half] networks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from morphnas.errors import MorphError
from morphnas.ir import (
    ArchGraph,
    BatchNorm2d,
    Conv2d,
    Identity,
    Layer,
    Linear,
    ParametricActivation,
    Pool2d,
    Weights,
)
from morphnas.ir.layers import Shape
from morphnas.modules.kernels import delta
from morphnas.morph.base import MorphContext, MorphRecord, MorphResult, apply_morph, register
from morphnas.morph.depth import new_bns, new_layer_weights
from morphnas.morph.sites import (
    calibrate,
    descendants,
    float_dtype,
    graph_errors_as,
    identity_edges,
    kernel_pair,
    layer_state,
    morph_result,
    parse_params,
    site_edge,
)


# splitting an identity -------------------------------------------------------------------------
@register("split_identity", sites=identity_edges)
def split_identity(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Section 4.1 / Fig. 4b: an identity edge of scale s becomes two parallel identities of scale s/2.

    A TYPE-II split (eq. 4) of the identity. No params; no weights.
    """
    parse_params(params, {}, "split_identity")
    scale = site_edge(graph, site, (Identity,)).layer.scale
    child = graph.copy()
    half = Identity(scale / 2)
    names = child.replace_parallel(site, [(f"{site}_h1", half), (f"{site}_h2", half)])
    return morph_result("split_identity", child, dict(weights), site, params, names, note=f"{names[0]} + {names[1]}")


# an identity becomes a conv path ---------------------------------------------------------------
def _image_identity_edges(graph: ArchGraph) -> list[str]:
    shapes = graph.shapes()
    return [e.name for e in graph.edges() if isinstance(e.layer, Identity) and len(shapes[e.src]) == 3]


@register("identity_to_conv_path", sites=_image_identity_edges, default_params=lambda g, s, r: {"kernels": [1, 1]})
def identity_to_conv_path(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Section 4.1 / Figs. 3b, 4b: identity (scale s) -> conv k1 -> BN -> P-act -> conv k2 -> BN.

    The module is simple morphable (TYPE-I steps, eq. 2, with P-act per eq. 8): conv1 is a
    centred delta, conv2 s times one, the BNs calibrated identities, so it is exact, borders
    included. Params: ``kernels`` [k1, k2], both odd (default [1, 1]); ``activation`` (P-act kind).
    """
    p = parse_params(params, {"kernels": [1, 1], "activation": "relu"}, "identity_to_conv_path")
    edge = site_edge(graph, site, (Identity,))
    k1, k2 = kernel_pair(p["kernels"], "identity_to_conv_path")
    if k1 % 2 == 0 or k2 % 2 == 0:
        raise MorphError(f"identity_to_conv_path: kernels must be odd (a centred identity), got {[k1, k2]}")
    shape = graph.shapes()[edge.src]
    if len(shape) != 3:
        raise MorphError(f"identity_to_conv_path: {site!r} carries a {shape} blob, not an image")
    c = shape[0]
    with graph_errors_as("identity_to_conv_path"):
        chain: list[tuple[str, Layer]] = [
            (f"{site}_conv1", Conv2d(c, c, k1, 1, k1 // 2, bias=False)),
            (f"{site}_bn1", BatchNorm2d(c)),
            (f"{site}_act", ParametricActivation(p["activation"])),
            (f"{site}_conv2", Conv2d(c, c, k2, 1, k2 // 2, bias=False)),
            (f"{site}_bn2", BatchNorm2d(c)),
        ]
    child = graph.copy()
    names = child.replace_edge(site, chain)
    dtype = float_dtype(weights)
    out = {**weights, **new_layer_weights(child, names, dtype)}
    out.update(layer_state(names[0], chain[0][1], dtype, weight=delta(c, c, k1)))
    out.update(layer_state(names[3], chain[3][1], dtype, weight=edge.layer.scale * delta(c, c, k2)))
    out = calibrate(child, out, new_bns(child, names), ctx.calibration)
    return morph_result("identity_to_conv_path", child, out, site, params, names, note=f"morph{k1}c{k2}")


# skips -----------------------------------------------------------------------------------------
def _subsampling(src: Shape, dst: Shape) -> int | None:
    """The stride s with which a 1x1 window maps image ``src`` onto ``dst``'s grid, if any."""
    if len(src) != 3 or len(dst) != 3:
        return None
    stride = max(1, -(-src[1] // dst[1]))
    fits = all((a - 1) // stride + 1 == b for a, b in zip(src[1:], dst[1:], strict=True))
    return stride if fits else None


def _skip_layer(src: Shape, dst: Shape) -> Layer | None:
    """A zero-initialised learnable skip from ``src`` into ``dst``: 1x1 conv (image) or linear."""
    if len(src) == 1 and len(dst) == 1:
        return Linear(src[0], dst[0], bias=False)
    stride = _subsampling(src, dst)
    return None if stride is None else Conv2d(src[0], dst[0], 1, stride, 0, bias=False)


def _pairs(graph: ArchGraph, fits: Any) -> list[str]:
    """Sites ``"u->v"``: v a strict descendant of u and ``fits(u, v, shapes)``."""
    shapes, below = graph.shapes(), descendants(graph)
    return [f"{u}->{v}" for u in graph.topological_blobs() for v in sorted(below[u]) if fits(u, v, shapes)]


def _split_site(graph: ArchGraph, site: str, morph: str) -> tuple[str, str]:
    u, sep, v = site.partition("->")
    blobs = set(graph.blobs())
    if not sep or u not in blobs or v not in blobs:
        raise MorphError(f"{morph}: site must be 'SRC->DST' naming two blobs, got {site!r}")
    if v not in descendants(graph)[u]:
        raise MorphError(f"{morph}: blob {v!r} does not come after {u!r}")
    return u, v


def _add_fits(graph: ArchGraph, u: str, v: str, shapes: dict[str, Shape]) -> bool:
    return graph.merge(v) == "add" and _skip_layer(shapes[u], shapes[v]) is not None


@register("add_skip", sites=lambda g: _pairs(g, lambda u, v, s: _add_fits(g, u, v, s)))
def add_skip(graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext) -> MorphResult:
    """A new edge from blob u to a later add blob v (site ``"u->v"``): a zero-initialised 1x1 conv.

    The conv takes the stride and channels that map u onto v (a linear layer between 1-D blobs).
    Zero weights make it exact; its weight gradient is v's gradient times u, so it learns. A
    TYPE-II step (eq. 4) with one branch zero. No params.
    """
    parse_params(params, {}, "add_skip")
    u, v = _split_site(graph, site, "add_skip")
    shapes = graph.shapes()
    if not _add_fits(graph, u, v, shapes):
        raise MorphError(f"add_skip: no 1x1 skip maps {u!r} {shapes[u]} onto add blob {v!r} {shapes[v]}")
    layer = _skip_layer(shapes[u], shapes[v])
    child = graph.copy()
    name = child.add_layer(child.fresh_name(f"skip_{u}_{v}"), u, v, layer)
    dtype = float_dtype(weights)
    zero = torch.zeros(layer.build().weight.shape)  # type: ignore[union-attr]
    out = {**weights, **layer_state(name, layer, dtype, weight=zero)}
    return morph_result("add_skip", child, out, site, params, [name])


def _concat_fits(graph: ArchGraph, u: str, v: str, shapes: dict[str, Shape]) -> bool:
    readers = graph.out_edges(v)
    return (
        bool(readers)
        and all(isinstance(e.layer, Conv2d) and e.layer.groups == 1 for e in readers)
        and _subsampling(shapes[u], shapes[v]) is not None
    )


@register("concat_skip", sites=lambda g: _pairs(g, lambda u, v, s: _concat_fits(g, u, v, s)))
def concat_skip(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Dense-style skip (site ``"u->v"``): v's convs read concat(v, u) with zero weights on u's channels.

    A new concat blob holds v (identity) then u (subsampled by a 1x1 max pool when v is
    smaller); u's channels come last, so in every consumer they are input channels C_v onwards,
    and those weights are zero (exact, as in the width morph). The consumers' weights are
    listed in ``new_weights``. No params.
    """
    parse_params(params, {}, "concat_skip")
    u, v = _split_site(graph, site, "concat_skip")
    shapes = graph.shapes()
    if not _concat_fits(graph, u, v, shapes):
        raise MorphError(f"concat_skip: {v!r} must be read by convolutions only and {u!r} must map onto its grid")
    stride = _subsampling(shapes[u], shapes[v])
    child = graph.copy()
    readers = child.out_edges(v)
    cat = child.add_blob(child.fresh_name(f"{v}_cat"), merge="concat")
    keep = child.add_layer(child.fresh_name(f"{v}_keep"), v, cat, Identity())
    subsample = Pool2d("max", 1, stride) if stride > 1 else Identity()
    skip = child.add_layer(child.fresh_name(f"skip_{u}_{v}"), u, cat, subsample)
    out = dict(weights)
    extra = shapes[u][0]
    for e in readers:
        conv: Conv2d = e.layer  # type: ignore[assignment]
        child.rewire_source(e.name, cat, conv.replace(in_channels=conv.in_channels + extra))
        w = weights[f"{e.name}.weight"]
        out[f"{e.name}.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    res = morph_result("concat_skip", child, out, site, params, [keep, skip],
                       note=f"{v} gains {extra} channels from {u}")
    res.new_weights = [f"{e.name}.weight" for e in readers]
    return res


# Table 1's networks ----------------------------------------------------------------------------
VARIANT = re.compile(r"^([1-9])c([1-9])((?:_2branch|_half)*)$")
SHORTCUT = re.compile(r"^s(\d+)b(\d+)_shortcut$")


@dataclass
class MorphSequence:
    """The outcome of several morphs: the last graph and weights, and the records to replay them."""

    graph: ArchGraph
    weights: Weights
    records: list[MorphRecord]
    exact: bool


def variant_shortcuts(graph: ArchGraph, half: bool) -> list[str]:
    """Identity shortcuts ``s{stage}b{block}_shortcut`` of every block but the first of each stage.

    ``half`` keeps the odd-indexed blocks (1, 3, 5, ... counting from 0) only.
    """
    found = []
    for e in graph.edges():
        m = SHORTCUT.match(e.name)
        if m and isinstance(e.layer, Identity) and int(m[2]) >= 1 and (not half or int(m[2]) % 2 == 1):
            found.append((int(m[1]), int(m[2]), e.name))
    return [name for *_, name in sorted(found)]


def _parse_variant(variant: str) -> tuple[int, int, bool, bool]:
    m = VARIANT.match(variant)
    suffixes = re.findall(r"_[a-z0-9]+", m[3]) if m else []
    if not m or len(suffixes) != len(set(suffixes)):
        raise MorphError(f"unknown ResNet variant {variant!r}: expected <k1>c<k2>[_2branch][_half], e.g. 1c1_half")
    k1, k2 = int(m[1]), int(m[2])
    if k1 % 2 == 0 or k2 % 2 == 0:
        raise MorphError(f"ResNet variant {variant!r}: kernel sizes must be odd")
    return k1, k2, "_2branch" in suffixes, "_half" in suffixes


def morph_resnet_variant(
    graph: ArchGraph,
    weights: Weights,
    variant: str,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
) -> MorphSequence:
    """Table 1's morph<k1>c<k2>[_2branch][_half] from a seed ResNet (section 4.1, Figs. 3-4).

    Every chosen identity shortcut is split into two halves (``split_identity``); one half, or
    both with ``_2branch``, becomes conv k1 -> BN -> P-act -> conv k2 -> BN. The records replay
    the whole sequence with :func:`morphnas.morph.replay`.
    """
    k1, k2, both, half = _parse_variant(variant)
    sites = variant_shortcuts(graph, half)
    if not sites:
        raise MorphError("morph_resnet_variant: no identity shortcuts named s<stage>b<block>_shortcut to morph")
    records: list[MorphRecord] = []
    exact = True

    def step(name: str, site: str, params: dict[str, Any]) -> list[str]:
        """Apply one morph; the names of the edges it created."""
        nonlocal graph, weights, exact
        res = apply_morph(name, graph, weights, site, params, seed=seed + len(records), calibration=calibration)
        before = {e.name for e in graph.edges()}
        graph, weights, exact = res.graph, res.weights, exact and res.exact
        records.append(res.record)
        return sorted(e.name for e in graph.edges() if e.name not in before)

    for site in sites:
        halves = step("split_identity", site, {})
        for h in halves[: 2 if both else 1]:
            step("identity_to_conv_path", h, {"kernels": [k1, k2]})
    return MorphSequence(graph, weights, records, exact)
