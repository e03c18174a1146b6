"""The time budget as a contract: one plan for the seed, the generations and the final phase.

A search with a time budget ``T`` trains the seed for ``seed_share * T``, runs generations of
children until ``(1 - final_share) * T``, then trains the best network on until ``T`` minus a
small reserve for the summary (loading and testing the final network). Phases that end early
leave their time to the next; one that overruns takes it from the next, so the search as a
whole ends within a few percent of ``T``. Without a time budget every deadline is infinite and
the seed and final phase train for their configured epochs.

Within the generations the contract is kept three ways: a generation starts only in the size
that fits the time left (:func:`fit_generation`: fewer epochs, then fewer children, or none),
a successive-halving rung starts only in the length that fits, and every child's training
carries the phase's deadline, which the trainer keeps to a step.

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

    @property
    def seed_until(self) -> float:
        """When the seed's training ends (infinite without a budget)."""
        return math.inf if self.seed_seconds is None else self.start + self.seed_seconds

    def final_seconds(self, now: float, reserve: float = 0.0) -> float | None:
        """Seconds the final phase may train, starting at ``now``, keeping back ``reserve``
        seconds (at least :data:`SUMMARY_RESERVE` of the budget) for the summary after it
        (None: no budget)."""
        if math.isinf(self.end):
            return None
        return max(0.0, self.end - now - max(reserve, SUMMARY_RESERVE * (self.end - self.start)))

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


MIN_EPOCH_SHARE = 0.25  # a generation shortened to fit trains its children at least this share of their epochs


def rung_sizes(children: int, eta: int | None) -> list[int]:
    """How many children each rung of successive halving trains: ``children``, then ``ceil(n /
    eta)`` of them until one is left; one rung of all without halving (``eta`` None)."""
    sizes = [children]
    while eta is not None and sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    return sizes


def generation_work(children: int, epochs: float, eta: int | None) -> float:
    """Child-epochs a generation trains: rung ``r`` trains its children ``epochs * eta ** r``."""
    return sum(n * epochs * (eta or 1) ** r for r, n in enumerate(rung_sizes(children, eta)))


def fit_generation(children: int, epochs: float, eta: int | None, epoch_seconds: float,
                   seconds_left: float) -> tuple[int, float] | None:
    """The children and the share of their epochs (at most 1) of a generation that ends within
    ``seconds_left`` when one child-epoch costs ``epoch_seconds`` of the machine's time (children
    share the machine, so the work adds up): the generation as configured when it fits, else its
    epochs shortened down to :data:`MIN_EPOCH_SHARE`, then half the children (at least two) and
    so on; None when not even two children at that share fit."""
    while True:
        work = generation_work(children, epochs, eta) * epoch_seconds
        share = min(1.0, seconds_left / work) if work > 0 else 1.0
        if share >= MIN_EPOCH_SHARE:
            return children, share
        if children <= 2:
            return None
        children = max(2, children // 2)
