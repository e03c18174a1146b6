"""Shared helpers for morphs: finding sites, parsing parameters, and weights of new layers.

Graph surgery itself belongs to the graph (``ArchGraph.replace_edge``, ``insert_after``,
``open_edge``, ``replace_parallel``, ``rewire_source``, ``copy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from morphnas.errors import GraphError, MorphError
from morphnas.ir import (
    ArchGraph,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Edge,
    Identity,
    Layer,
    Linear,
    ParametricActivation,
    Weights,
    compile_graph,
    load_weights,
)
from morphnas.morph.base import MorphRecord, MorphResult


# sites ----------------------------------------------------------------------------------------
def conv_edges(graph: ArchGraph) -> list[str]:
    """Names of ungrouped convolutions (the ``G`` of eqs. 2 and 4)."""
    return [e.name for e in graph.edges() if isinstance(e.layer, Conv2d) and e.layer.groups == 1]


def linear_edges(graph: ArchGraph) -> list[str]:
    return [e.name for e in graph.edges() if isinstance(e.layer, Linear)]


def identity_edges(graph: ArchGraph) -> list[str]:
    return [e.name for e in graph.edges() if isinstance(e.layer, Identity)]


def site_edge(graph: ArchGraph, site: str, kinds: tuple[type[Layer], ...], *, grouped: bool = False) -> Edge:
    """The edge named ``site``, which must be one of ``kinds`` and, unless ``grouped`` (for a morph
    that leaves the layer itself alone), not a grouped convolution; MorphError otherwise."""
    try:
        edge = graph.edge(site)
    except GraphError:
        raise MorphError(f"no layer named {site!r}") from None
    if not isinstance(edge.layer, kinds):
        wanted = " or ".join(k.type for k in kinds)
        raise MorphError(f"layer {site!r} is a {edge.layer.type} layer; expected {wanted}")
    if not grouped and isinstance(edge.layer, Conv2d) and edge.layer.groups != 1:
        raise MorphError(f"layer {site!r} is a grouped convolution (groups={edge.layer.groups})")
    return edge


def descendants(graph: ArchGraph) -> dict[str, set[str]]:
    """Every blob's strict descendants, in one pass over the reversed topological order."""
    below: dict[str, set[str]] = {}
    for blob in reversed(graph.topological_blobs()):
        below[blob] = set()
        for e in graph.out_edges(blob):
            below[blob] |= below[e.dst] | {e.dst}
    return below


@contextmanager
def graph_errors_as(morph: str) -> Iterator[None]:
    """Turn a GraphError (a spec or shape a request cannot have) into a one-line MorphError."""
    try:
        yield
    except GraphError as err:
        raise MorphError(f"{morph}: {err}") from None


def morph_result(
    morph: str,
    graph: ArchGraph,
    weights: Weights,
    site: str,
    params: dict[str, Any],
    new: Iterable[str],
    exact: bool = True,
    note: str = "",
) -> MorphResult:
    """A validated MorphResult; ``new`` names the new edges (their weights are ``new_weights``)."""
    with graph_errors_as(morph):
        graph.validate()
    prefixes = tuple(f"{e}." for e in new)
    created = [k for k in weights if k.startswith(prefixes)]
    return MorphResult(graph, weights, exact, MorphRecord(morph, site, dict(params), 0), created, note)


# parameters -----------------------------------------------------------------------------------
def parse_params(params: Mapping[str, Any], defaults: dict[str, Any], morph: str) -> dict[str, Any]:
    """``defaults`` updated by ``params``; unknown keys raise MorphError."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise MorphError(f"{morph}: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(defaults)}")
    return {**defaults, **params}


def kernel_pair(value: Any, morph: str) -> tuple[int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in value)
    ):
        raise MorphError(f"{morph}: kernels must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


# weights --------------------------------------------------------------------------------------
def float_dtype(weights: Weights) -> torch.dtype:
    """The floating dtype the weights are stored in (new weights follow it)."""
    return next((v.dtype for v in weights.values() if v.is_floating_point()), torch.float32)


def without(weights: Weights, edges: Iterable[str]) -> Weights:
    prefixes = tuple(f"{e}." for e in edges)
    return {k: v for k, v in weights.items() if not k.startswith(prefixes)}


def layer_state(name: str, layer: Layer, dtype: torch.dtype, **values: torch.Tensor) -> Weights:
    """The state of a new layer ``name``: its default state with ``values`` put in, in ``dtype``."""
    module = layer.build()
    state = {} if module is None else module.state_dict()
    unknown = set(values) - set(state)
    if unknown:  # pragma: no cover - a programming error in a morph
        raise KeyError(f"{layer.type} has no state {sorted(unknown)}")
    state.update(values)
    return {f"{name}.{k}": (v.to(dtype) if v.is_floating_point() else v).detach().clone() for k, v in state.items()}


def pact_state(name: str, layer: ParametricActivation, dtype: torch.dtype) -> Weights:
    """Eq. 8 with ``a = 1``: the identity."""
    return layer_state(name, layer, dtype, weight=torch.ones(layer.num_parameters))


def batchnorm(features: int, image: bool) -> BatchNorm2d:
    return BatchNorm2d(features) if image else BatchNorm1d(features)


def identity_bn_state(
    name: str, layer: BatchNorm2d, dtype: torch.dtype, mean: torch.Tensor | None = None, var: torch.Tensor | None = None
) -> Weights:
    """A BN that is the identity in eval mode: gamma = sqrt(var + eps), beta = mean.

    Without statistics, mean 0 and variance 1 (so gamma = sqrt(1 + eps), not 1: a gamma of 1
    would scale by 1 / sqrt(1 + eps) and miss exactness by about 5e-6).
    """
    n = layer.num_features
    mean = torch.zeros(n, dtype=torch.float64) if mean is None else mean.to(torch.float64)
    var = torch.ones(n, dtype=torch.float64) if var is None else var.to(torch.float64)
    return layer_state(
        name, layer, dtype, weight=(var + layer.eps).sqrt(), bias=mean, running_mean=mean, running_var=var
    )


def calibrate(graph: ArchGraph, weights: Weights, bns: list[str], batch: torch.Tensor | None) -> Weights:
    """Give the new BNs ``bns`` (eval-mode identities already) the statistics of ``batch``.

    Every new BN is the identity before and after, so one eval-mode pass of the child sees each
    BN's input as the parent computes it ("run the parent up to that blob"). Variances are the
    biased ones train mode normalises with, so on that batch train mode is the identity too.
    """
    if batch is None or not bns:
        return weights
    dtype = float_dtype(weights)
    module = compile_graph(graph).to(dtype)
    load_weights(module, weights)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(module, bn).register_forward_pre_hook(lambda _m, args, bn=bn: seen.__setitem__(bn, args[0]))
        for bn in bns
    ]
    with torch.no_grad():
        module.eval()(batch.to(dtype))
    for hook in hooks:
        hook.remove()
    out = dict(weights)
    for bn in bns:
        x = seen[bn].transpose(0, 1).reshape(seen[bn].shape[1], -1)
        out.update(identity_bn_state(bn, graph.layer(bn), dtype, x.mean(1), x.var(1, unbiased=False)))
    return out
