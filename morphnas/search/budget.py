"""The time budget as a contract: one plan for the seed, the generations and the final phase.

A search with a time budget ``T`` trains the seed for ``seed_share * T``, runs generations of
children until ``(1 - final_share) * T``, then trains the best network on until ``T`` minus a
small reserve for the summary (loading and testing the final network). Phases that end early
leave their time to the next; one that overruns takes it from the next, so the search as a
whole ends within a few percent of ``T``. Without a time budget every deadline is infinite and
the seed and final phase train for their configured epochs.
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

    def final_seconds(self, now: float) -> float | None:
        """Seconds the final phase may train, starting at ``now`` (None: no budget)."""
        if math.isinf(self.end):
            return None
        return max(0.0, self.end - now - SUMMARY_RESERVE * (self.end - self.start))


def plan_budget(start: float, total: float | None, seed_share: float, final_share: float) -> BudgetPlan:
    """Split ``total`` seconds from ``start`` (see the module docstring); ``total=None`` is no budget."""
    if total is None:
        return BudgetPlan(start, None, math.inf, math.inf)
    return BudgetPlan(start, seed_share * total, start + (1 - final_share) * total, start + total)
