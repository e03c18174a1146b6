"""Selecting the parents of a generation from the lineages recorded in the study.

A selector is a strategy object, as Optuna's samplers are: :class:`Search` asks it for the
parent of each child slot, given the trials so far and how to rank them. :class:`BestLineages`
is the default; another policy is one subclass of :class:`ParentSelector`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

from optuna.trial import FrozenTrial, TrialState

Score = Callable[[FrozenTrial], tuple[int, float]]


class ParentSelector(abc.ABC):
    """Chooses the parents of a generation."""

    @abc.abstractmethod
    def select(self, trials: list[FrozenTrial], slots: int, score: Score, pareto: set[int] | None) -> list[FrozenTrial]:
        """The parent of each of ``slots`` children, from ``trials`` (completed ones with a
        checkpoint may parent), ranked by ``score`` (lower is better); ``pareto`` holds the
        numbers on the Pareto front of a multi-objective study, else None. May return fewer."""


class BestLineages(ParentSelector):
    """The best ``parents`` completed trials (Pareto-front members first) take the slots
    round-robin, best first, so no single lineage takes every slot; ``max_children_per_parent``
    caps any one parent (default: an even share)."""

    def __init__(self, parents: int = 2, max_children_per_parent: int | None = None) -> None:
        self.parents = parents
        self.max_children_per_parent = max_children_per_parent

    def select(self, trials: list[FrozenTrial], slots: int, score: Score, pareto: set[int] | None) -> list[FrozenTrial]:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("checkpoint")]
        ranked = sorted(done, key=lambda t: (pareto is not None and t.number not in pareto, score(t), t.number))
        pool = ranked[: self.parents]
        if not pool:
            return []
        cap = self.max_children_per_parent or math.ceil(slots / len(pool))
        chosen: list[FrozenTrial] = []
        while len(chosen) < slots:
            for trial in pool:
                if len(chosen) < slots and sum(c.number == trial.number for c in chosen) < cap:
                    chosen.append(trial)
            if len(chosen) == cap * len(pool):
                break
        return chosen
