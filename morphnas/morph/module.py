"""Realise a module in a network: the ``morph_module`` morph (Theorem 8 of the 2017 paper).

One stride-1 "same" convolution G becomes any single-source, single-sink DAG of convolutions
(section 3.5-3.6): Algorithm 1 reduces the module, and the filters come from replaying its
morphing sequence (simple morphable) or from Algorithm 2 on the irreducible core (complex);
eq. 5 then holds up to the solver's residual. In the network each internal vertex of the
module becomes a sum blob followed by a calibrated identity batch norm and a P-activation at
a = 1 (section 3.7, eqs. 8-9), so the child can learn non-linearities from an exact start.
A convolution into a concat blob keeps its slot: the module's sink is a new sum blob there.

The morph is exact when the solver converged and no source-to-sink path stacks two convs wider
than 1x1 (with zero padding such a path equals one conv only away from the borders); otherwise
it is applied as approximate and its note gives the residual.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch

from morphnas.errors import GraphError, MorphError
from morphnas.ir import ArchGraph, Conv2d, ParametricActivation, Weights
from morphnas.modules.algebra import effective_kernel, module_from_json, paths_exact_at_borders, validate_module
from morphnas.modules.fixtures import MODULES
from morphnas.modules.solver import solve
from morphnas.morph.base import MorphContext, MorphResult, register
from morphnas.morph.sites import (
    batchnorm,
    calibrate,
    conv_edges,
    float_dtype,
    identity_bn_state,
    layer_state,
    morph_result,
    pact_state,
    parse_params,
    site_edge,
    without,
)

SOLVER_TOLERANCE = 1e-10
DEFAULTS: dict[str, Any] = {"template": "A", "module": None, "width": None, "max_sweeps": 50}


def module_sites(graph: ArchGraph) -> list[str]:
    """Stride-1 "same" undilated convolutions up to 3x3 (what modules (A)-(D) carry: their
    convolutions compose as eq. 2 does, tap next to tap)."""
    out = []
    for name in conv_edges(graph):
        conv = graph.layer(name)
        same = conv.stride == 1 and conv.dilation == 1 and conv.padding == conv.kernel_size // 2
        if same and conv.kernel_size <= 3:
            out.append(name)
    return out


def _module(p: dict[str, Any]) -> nx.MultiDiGraph:
    if p["module"] is not None:
        try:
            return module_from_json(p["module"])
        except GraphError as err:
            raise MorphError(f"morph_module: {err}") from None
    if p["template"] not in MODULES:
        raise MorphError(f"morph_module: unknown template {p['template']!r}; known: {', '.join(MODULES)}")
    return nx.MultiDiGraph(MODULES[p["template"]])


@register("morph_module", sites=module_sites, default_params=lambda g, s, r: {"template": "A"})
def morph_module(
    graph: ArchGraph, weights: Weights, site: str, params: dict[str, Any], ctx: MorphContext
) -> MorphResult:
    """Theorem 8: a convolution becomes a module (Algorithms 1 and 2, eq. 5)."""
    p = parse_params(params, DEFAULTS, "morph_module")
    if site not in module_sites(graph):
        conv = site_edge(graph, site, (Conv2d,)).layer
        if conv.dilation > 1:
            raise MorphError(f"morph_module: {site!r} is dilated (dilation={conv.dilation}); "
                             "a module's convolutions compose undilated (eq. 2)")
        raise MorphError(f"morph_module: {site!r} is not a stride-1 'same' convolution")
    edge = graph.edge(site)
    conv: Conv2d = edge.layer
    module = _module(p)
    source, sink = validate_module(module)
    if effective_kernel(module) < conv.kernel_size:
        raise MorphError(
            f"morph_module: the module's effective kernel {effective_kernel(module)} cannot carry a "
            f"{conv.kernel_size}x{conv.kernel_size} convolution"
        )
    width = p["width"] or max(conv.in_channels, conv.out_channels)
    inner = [v for v in nx.topological_sort(module) if v not in (source, sink)]
    channels = {v: int(module.nodes[v].get("channels", width)) for v in inner}
    channels.update({source: conv.in_channels, sink: conv.out_channels})
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
    solution = solve(module, weights[f"{site}.weight"].double(), channels=channels,
                     max_sweeps=p["max_sweeps"], tol=SOLVER_TOLERANCE, seed=seed)

    child, dtype = graph.copy(), float_dtype(weights)
    into = dict(zip((source, sink), child.open_edge(site), strict=True))  # where a module edge writes to
    out_of = dict(into)  # where a module edge reads from
    new_weights = without(weights, [site])
    created, bns = [], []
    for v in inner:
        into[v] = child.add_blob(child.fresh_name(f"{site}_{v}"))
        out_of[v] = child.add_blob(child.fresh_name(f"{site}_{v}_out"))
        bn_layer, pact = batchnorm(channels[v], True), ParametricActivation("relu", 1)
        bn, act = child.add_chain(into[v], out_of[v], [(f"{site}_{v}_bn", bn_layer), (f"{site}_{v}_act", pact)])
        new_weights.update(identity_bn_state(bn, bn_layer, dtype))
        new_weights.update(pact_state(act, pact, dtype))
        created += [bn, act]
        bns.append(bn)
    bias_placed = False
    for u, w, name, kernel in module.edges(keys=True, data="kernel"):
        carries_bias = conv.bias and w == sink and not bias_placed
        bias_placed |= carries_bias
        layer = Conv2d(channels[u], channels[w], kernel, 1, kernel // 2, bias=carries_bias)
        new = child.fresh_name(f"{site}_{name}")
        child.add_layer(new, out_of[u], into[w], layer)
        values = {"weight": solution.filters[name]}
        if carries_bias:
            values["bias"] = weights[f"{site}.bias"]
        new_weights.update(layer_state(new, layer, dtype, **values))
        created.append(new)
    new_weights = calibrate(child, new_weights, bns, ctx.calibration)
    exact = solution.converged and paths_exact_at_borders(module)
    note = (
        f"solver residual {solution.residual:.2e} after {solution.sweeps} sweeps"
        + ("" if paths_exact_at_borders(module) else "; a path stacks two convs wider than 1x1 (borders differ)")
    )
    return morph_result("morph_module", child, new_weights, site, params, created, exact=exact, note=note)
