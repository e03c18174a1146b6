"""The time budget as a contract: one plan for the seed, the generations and the final phase.

A search with a time budget ``T`` trains the seed for ``seed_share * T``, runs generations of
children until ``(1 - final_share) * T``, then trains the best network on until ``T`` minus a
small reserve for the summary (loading and testing the final network). Phases that end early
leave their time to the next; one that overruns takes it from the next, so the search as a
whole ends within a few percent of ``T``. Without a time budget every deadline is infinite and
the seed and final phase train for their configured epochs.

The plan also says where a lineage is on the one learning-rate cycle it follows when the
fine-tuning schedule is ``lineage`` (:meth:`BudgetPlan.position`): the fraction of the budget
spent, so the seed, the rungs of its descendants and the final phase together make one cosine
cycle over the whole budget, as the seed trained alone for the whole budget gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUMMARY_RESERVE = 0.01  # of the budget, kept back for the summary after the final phase


@dataclass(frozen=True)
class BudgetPlan:
    """Deadlines on the ``time.monotonic()`` clock, and the seed's training time in seconds."""

    start: float
    seed_seconds: float | None
    generations_until: float
    end: float
    seed_share: float
    final_share: float

    def final_seconds(self, now: float) -> float | None:
        """Seconds the final phase may train, starting at ``now`` (None: no budget)."""
        if math.isinf(self.end):
            return None
        return max(0.0, self.end - now - SUMMARY_RESERVE * (self.end - self.start))

    def position(self, now: float, generations_done: float) -> float:
        """Where a lineage is on its learning-rate cycle at ``now``, in [0, 1]: the fraction of
        the budget spent; without a budget, the seed takes the cycle up to ``seed_share``, the
        generations share what is left before ``1 - final_share`` evenly by the fraction
        ``generations_done`` of them run, and the final phase the rest."""
        if math.isinf(self.end):
            return self.seed_share + (1 - self.seed_share - self.final_share) * min(1.0, generations_done)
        return min(1.0, max(0.0, (now - self.start) / (self.end - self.start)))


def plan_budget(start: float, total: float | None, seed_share: float, final_share: float) -> BudgetPlan:
    """Split ``total`` seconds from ``start`` (see the module docstring); ``total=None`` is no budget."""
    if total is None:
        return BudgetPlan(start, None, math.inf, math.inf, seed_share, final_share)
    return BudgetPlan(start, seed_share * total, start + (1 - final_share) * total, start + total, seed_share,
                      final_share)
