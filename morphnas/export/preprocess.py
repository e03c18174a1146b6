"""Exports that take raw pixels: the data set's normalisation as the network's first layer.

A network trained by morphnas expects ``(raw - mean) / std`` per channel, with the train split's
statistics (:class:`~morphnas.train.Dataset`). :func:`with_input_normalisation` puts that into
the graph as an eval-mode batch norm named ``input_norm`` on a new input blob ``raw``: running
mean ``mean``, running variance ``std**2``, scale ``sqrt(std**2 + eps) / std`` and no shift, so
it computes ``(raw - mean) / std`` (to float rounding) in every format that has a batch norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, BatchNorm2d, Weights


def with_input_normalisation(
    graph: ArchGraph, weights: Weights, mean: Sequence[float], std: Sequence[float]
) -> tuple[ArchGraph, Weights]:
    """``graph`` and ``weights`` with ``input_norm`` in front: they take raw (unnormalised) inputs."""
    channels = graph.input_shape[0]
    if len(graph.input_shape) != 3 or len(mean) != channels or len(std) != channels:
        raise ConfigError(f"an input normalisation needs one mean and std per channel of a (C, H, W) input; got "
                          f"{len(mean)} and {len(std)} for input shape {graph.input_shape}")
    out = graph.copy()
    first = out.source
    raw, name = out.add_blob(out.fresh_name("raw")), out.fresh_name("input_norm")
    layer = BatchNorm2d(channels)
    out.add_layer(name, raw, first, layer)
    dtype = next((w.dtype for w in weights.values() if w.is_floating_point()), torch.float32)
    var = torch.tensor(std, dtype=torch.float64) ** 2
    state = layer.build().state_dict()
    state.update(weight=(var + layer.eps).sqrt() / var.sqrt(), bias=torch.zeros(channels, dtype=torch.float64),
                 running_mean=torch.tensor(mean, dtype=torch.float64), running_var=var)
    added = {f"{name}.{k}": (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return out.validate(), {**weights, **added}
