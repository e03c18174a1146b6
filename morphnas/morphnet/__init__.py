"""MorphNet (Gordon et al., CVPR 2018): shrink with a resource-weighted regulariser, expand uniformly.

- :mod:`~morphnas.morphnet.regulariser`: the "gamma" regulariser (cost-weighted L1 of batch-norm
  scales, Group Lasso without BN) and the per-channel MAC / parameter cost weights.
- :mod:`~morphnas.morphnet.shrink`: remove the channels it killed (morph ``shrink``) and the
  regularised training loop.
- :mod:`~morphnas.morphnet.expand`: the largest uniform width multiplier within a budget
  (morph ``expand``, exact via the widen morph).
- :mod:`~morphnas.morphnet.cycle`: shrink-expand cycles (Algorithm 1).
- :mod:`~morphnas.morphnet.rules`: grammar rules ``shrink`` and ``expand`` for the search (import
  it to add them to :data:`morphnas.grammar.rules.RULES`).

Importing this package registers the morphs ``shrink`` and ``expand``.
"""

from morphnas.morphnet.cycle import (
    DEFAULT_STRENGTH,
    CycleConfig,
    CycleResult,
    Iteration,
    layer_widths,
    morphnet,
    parse_budget,
)
from morphnas.morphnet.expand import ExpandResult, expand_morph, expand_to_budget, narrowest_cost, scale_network
from morphnas.morphnet.regulariser import (
    AGGREGATES,
    DEFAULT_THRESHOLD,
    TARGETS,
    ChannelMap,
    GammaRegulariser,
    channel_costs,
    regulariser,
)
from morphnas.morphnet.shrink import (
    Removal,
    ShrinkResult,
    remove_units,
    select_dead,
    select_fraction,
    select_uniform,
    shrink,
    shrink_morph,
    train_regularised,
)

__all__ = [
    "AGGREGATES", "DEFAULT_STRENGTH", "DEFAULT_THRESHOLD", "TARGETS", "ChannelMap", "CycleConfig", "CycleResult",
    "ExpandResult", "GammaRegulariser", "Iteration", "Removal", "ShrinkResult", "channel_costs", "expand_morph",
    "expand_to_budget", "layer_widths", "morphnet", "narrowest_cost", "parse_budget", "regulariser", "remove_units",
    "scale_network", "select_dead", "select_fraction", "select_uniform", "shrink", "shrink_morph", "train_regularised",
]
