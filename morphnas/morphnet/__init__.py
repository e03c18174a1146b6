"""MorphNet (Gordon et al., CVPR 2018): shrink with a resource-weighted regulariser, expand uniformly.

- :mod:`~morphnas.morphnet.regulariser`: the "gamma" regulariser (cost-weighted L1 of batch-norm
  scales, Group Lasso without BN), the per-channel MAC / parameter cost weights and the
  regularised training loop.
- :mod:`~morphnas.morphnet.cycle`: shrink-expand cycles (Algorithm 1).

The morphs themselves live with every other morph: :mod:`morphnas.morph.shrink` removes the
channels the regulariser killed (morph ``shrink``), :mod:`morphnas.morph.expand` finds the
largest uniform width multiplier within a budget (morph ``expand``, exact via the widen morph),
both over :class:`morphnas.morph.channels.ChannelMap`; the grammar rules ``shrink`` and
``expand`` are in :data:`morphnas.grammar.rules.RULES`. This package re-exports them as the
MorphNet API.
"""

from morphnas.morph.channels import AGGREGATES, DEFAULT_THRESHOLD, TARGETS, ChannelMap
from morphnas.morph.expand import ExpandResult, expand_morph, expand_to_budget, narrowest_cost, scale_network
from morphnas.morph.shrink import (
    Removal,
    ShrinkResult,
    remove_units,
    select_dead,
    select_fraction,
    select_uniform,
    shrink,
    shrink_morph,
)
from morphnas.morphnet.cycle import (
    DEFAULT_STRENGTH,
    CycleConfig,
    CycleResult,
    Iteration,
    layer_widths,
    morphnet,
    morphnet_from_scratch,
    parse_budget,
)
from morphnas.morphnet.regulariser import GammaRegulariser, channel_costs, regulariser, train_regularised

__all__ = [
    "AGGREGATES", "DEFAULT_STRENGTH", "DEFAULT_THRESHOLD", "TARGETS", "ChannelMap", "CycleConfig", "CycleResult",
    "ExpandResult", "GammaRegulariser", "Iteration", "Removal", "ShrinkResult", "channel_costs", "expand_morph",
    "expand_to_budget", "layer_widths", "morphnet", "morphnet_from_scratch", "narrowest_cost", "parse_budget",
    "regulariser", "remove_units",
    "scale_network", "select_dead", "select_fraction", "select_uniform", "shrink", "shrink_morph", "train_regularised",
]
