"""MorphNet's resource-weighted sparsifying regulariser (the "gamma" regulariser).

Gordon et al., "MorphNet: Fast & Simple Resource-Constrained Structure Learning of Deep
Networks" (CVPR 2018), Algorithm 1 step 1: train with ``loss + lambda * G(theta)`` where ``G``
charges every output channel ("neuron") what it costs. With batch norm after a convolution,
``G`` is the cost-weighted L1 norm of the BN scales ``|gamma|`` (the paper's section on
resource-weighted sparsifying regularisation); for channels without a batch norm it is the
Group Lasso of the producer's filters (the L2 norm of each output row), the form the seed
summary (§2.1) describes.

Channels and units (what is removed as a whole) are those of
:class:`morphnas.morph.channels.ChannelMap`, which the shrink and expand morphs read too.

Scores. A unit's score is the **max** of ``|gamma|`` over every batch norm that scales one of its
channels (``aggregate="max"``, MorphNet's default grouping of regularisers for channels tied by
an addition: a channel is alive while any of its batch norms keeps it alive), or their sum
(``aggregate="sum"``, which sends gradient to every BN instead of the largest). A unit without a
batch norm is scored by the Group Lasso norm of its producers' output rows; a unit with neither
(channels only a shortcut writes) is unscored and never removed on its own.

Costs (the paper's FLOP and model-size regularisers). A convolution with ``a_in`` alive input and
``a_out`` alive output channels, kernel ``k x k`` and an ``H x W`` output costs
``k^2 H W a_in a_out`` MACs and ``k^2 a_in a_out`` weights. Its derivative in one output
channel, ``k^2 H W a_in``, is that channel's share of the producer; its derivative in one input
channel, ``k^2 H W a_out``, is that channel's share of the consumer. A channel's cost weight is
the sum of both over every layer writing or reading it (plus depthwise convolutions, biases and
batch-norm parameters it carries), computed from ``graph.shapes()``. As in MorphNet, the alive
counts follow the training: a channel whose score fell below ``threshold`` no longer counts.
Early, high-resolution channels therefore cost the most MACs, late ones the most parameters.

Strength. MorphNet picks ``lambda`` so that the regulariser is comparable to the loss; here the
regulariser returns ``strength / initial_cost * sum_u cost_u * score_u`` with ``initial_cost``
the network's :func:`~morphnas.ir.cost` in the target measure. With every scale at 1 the value
is about ``2 * strength`` (every convolution is charged through its inputs and its outputs).

:func:`train_regularised` is the trainer with the regulariser as its extra loss term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, cost
from morphnas.morph.channels import DEFAULT_THRESHOLD, ChannelMap, check_choice
from morphnas.train import Dataset, EpochReport, TrainConfig, TrainResult, train

Regulariser = Callable[[nn.Module], torch.Tensor]


class GammaRegulariser:
    """``strength / initial_cost * sum_u cost_u * score_u``, an extra loss term (call it on the model).

    ``cost_u`` is recomputed at every call from the channels still alive (``dynamic=True``, as
    MorphNet's alive counts) or fixed at the graph's widths (``dynamic=False``); it carries no
    gradient. Frozen and unscored units are not charged.
    """

    def __init__(
        self,
        graph: ArchGraph,
        target: str = "macs",
        *,
        strength: float = 1.0,
        aggregate: str = "max",
        threshold: float = DEFAULT_THRESHOLD,
        dynamic: bool = True,
    ) -> None:
        check_choice(target, aggregate)
        if not strength >= 0:
            raise ConfigError(f"strength must be >= 0, got {strength}")
        self.map = ChannelMap(graph)
        self.target, self.strength, self.aggregate = target, float(strength), aggregate
        self.threshold, self.dynamic = float(threshold), dynamic
        self.initial_cost = float(cost(graph)[target])
        self.charged = self.map.scored & ~self.map.frozen
        self._static = self.map.unit_costs(target)

    def unit_costs(self, scores: torch.Tensor | None = None) -> torch.Tensor:
        if not self.dynamic or scores is None:
            return self._static
        return self.map.unit_costs(self.target, self.map.alive_nodes(scores, self.threshold))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        scores = self.map.scores(params, self.aggregate)
        weights = self.unit_costs(scores).to(scores.dtype) * self.charged.to(scores.dtype)
        finite = torch.where(self.charged, scores, torch.zeros_like(scores))
        return (self.strength / self.initial_cost) * (weights * finite).sum()


def regulariser(
    graph: ArchGraph,
    target: str = "macs",
    *,
    strength: float = 1.0,
    aggregate: str = "max",
    threshold: float = DEFAULT_THRESHOLD,
    dynamic: bool = True,
) -> GammaRegulariser:
    """MorphNet's gamma regulariser for ``graph`` targeting ``"macs"`` or ``"params"``.

    Returns a callable ``model -> scalar tensor`` to add to the training loss (Algorithm 1,
    step 1); ``model`` is ``compile_graph(graph, ...)`` (its parameters are looked up by name).
    """
    return GammaRegulariser(graph, target, strength=strength, aggregate=aggregate, threshold=threshold,
                            dynamic=dynamic)


def channel_costs(graph: ArchGraph, target: str = "macs") -> dict[str, float]:
    """Per-channel cost weight of every channel group, keyed by the group's first blob.

    The weight of one channel at the graph's widths: what the network's MACs (or parameters)
    drop by if that channel alone goes (its producers' and consumers' shares). Frozen groups
    (input, logits) are left out.
    """
    cmap = ChannelMap(graph)
    nodes = cmap.node_costs(target)
    return {
        cmap.group_name(i): float(nodes[cmap.nodes(i)].mean())
        for i, g in enumerate(cmap.groups) if not g.frozen and g.width
    }


# regularised training -------------------------------------------------------------------------
@dataclass
class RegularisedRun:
    """A training run with an extra loss term: the usual result and the penalty's mean per epoch."""

    result: TrainResult
    penalties: list[float]


def train_regularised(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    penalty: Regulariser,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> RegularisedRun:
    """Train ``model`` in place on ``cross_entropy + penalty(model)`` (MorphNet Algorithm 1, step 1).

    ``EpochReport.train_loss`` is the cross-entropy alone; the penalty's epoch means are in
    :attr:`RegularisedRun.penalties`.
    """
    result = train(model, data, config, on_epoch=on_epoch, extra_loss=penalty)
    return RegularisedRun(result, [report.extra_loss for report in result.history])
