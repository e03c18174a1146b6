"""Selecting the parents of a generation from the lineages recorded in the study."""

from __future__ import annotations

import math
from collections.abc import Callable

from optuna.trial import FrozenTrial, TrialState

from morphnas.search.study import val_error


def select_parents(
    trials: list[FrozenTrial],
    slots: int,
    *,
    parents: int,
    max_children_per_parent: int | None = None,
    pareto: set[int] | None = None,
    score: Callable[[FrozenTrial], float | tuple[int, float]] = val_error,
) -> list[FrozenTrial]:
    """The parent of each of ``slots`` children.

    The best ``parents`` completed trials (lowest ``score``, by default the validation error;
    Pareto-front members first in a multi-objective study) take the slots round-robin, best
    first, so no single lineage takes every slot; ``max_children_per_parent`` caps any one
    parent (default: an even share).
    """
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("checkpoint")]
    ranked = sorted(done, key=lambda t: (pareto is not None and t.number not in pareto, score(t), t.number))
    pool = ranked[:parents]
    if not pool:
        return []
    cap = max_children_per_parent or math.ceil(slots / len(pool))
    chosen: list[FrozenTrial] = []
    while len(chosen) < slots:
        for trial in pool:
            if len(chosen) < slots and sum(c.number == trial.number for c in chosen) < cap:
                chosen.append(trial)
        if len(chosen) == cap * len(pool):
            break
    return chosen
