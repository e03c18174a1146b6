"""Grammar rules ``shrink`` and ``expand`` for the search (MorphNet as search moves).

Importing this module adds them to :data:`morphnas.grammar.rules.RULES`:

- ``shrink`` (params: ``fraction``): drop the lowest-scoring fraction of one channel group's
  channels, scored by their batch-norm scales (no regularised training: the search's own
  fine-tuning follows). Approximate; the position picks the group (early to late).
- ``expand`` (params: ``factor``): multiply every group's width by ``factor`` (exact).

Paired with ``objectives: [error, macs]`` (or ``params``) they let a multi-objective search
trade width for accuracy along the Pareto front, MorphNet's shrink and expand steps
(Gordon et al., CVPR 2018, Algorithm 1 steps 2-3) as grammar moves.
"""

from __future__ import annotations

from morphnas.grammar.rules import RULES, Rule
from morphnas.morphnet import expand as _expand  # noqa: F401 - registers the morph "expand"
from morphnas.morphnet import shrink as _shrink  # noqa: F401 - registers the morph "shrink"

NEW_RULES = (
    Rule("shrink", "shrink", frozenset({"fraction"}),
         summary="MorphNet shrink: drop a group's lowest-|gamma| channels (approximate)"),
    Rule("expand", "expand", frozenset({"factor"}), summary="MorphNet expand: every width x factor (exact)"),
)

for _rule in NEW_RULES:
    RULES.setdefault(_rule.name, _rule)
