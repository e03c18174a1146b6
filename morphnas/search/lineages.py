"""Selecting the parents of a generation from the lineages recorded in the study.

A selector is a strategy object, as Optuna's samplers are: :class:`Search` asks it for the
parent of each child slot, given the trials that may parent (:func:`may_parent`) and how to
rank them. A search space names its selector (``selection.selector``); the study keeps the
space, so a resumed search selects as the search it continues did. :class:`BestLineages` is
the default; another policy is one subclass of :class:`ParentSelector` with a ``name``, which
defining it registers (in :data:`SELECTORS`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from optuna.trial import FrozenTrial

from morphnas.errors import ConfigError
from morphnas.search.record import TrialRecord

if TYPE_CHECKING:
    from morphnas.grammar.space import Selection

Score = Callable[[FrozenTrial], tuple[int, float]]
SELECTORS: dict[str, type[ParentSelector]] = {}  # every selector by its name, as a space names it


class ParentSelector(abc.ABC):
    """Chooses the parents of a generation; a subclass that sets ``name`` registers under it."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            SELECTORS[cls.name] = cls

    @classmethod
    def from_selection(cls, selection: Selection) -> ParentSelector:
        """The selector as a space's ``selection`` configures it (by default it takes nothing from it)."""
        return cls()

    @abc.abstractmethod
    def select(self, trials: list[FrozenTrial], slots: int, score: Score, pareto: set[int] | None) -> list[FrozenTrial]:
        """The parent of each of ``slots`` children, from ``trials`` (each completed, with a
        checkpoint: :func:`may_parent`), ranked by ``score`` (lower is better); ``pareto`` holds
        the numbers on the Pareto front of a multi-objective study, else None. May return fewer."""


class BestLineages(ParentSelector):
    """The best ``parents`` trials (Pareto-front members first) take the slots round-robin,
    best first, so no single lineage takes every slot; ``max_children_per_parent`` caps any one
    parent (default: an even share)."""

    name = "best_lineages"

    def __init__(self, parents: int = 2, max_children_per_parent: int | None = None) -> None:
        self.parents = parents
        self.max_children_per_parent = max_children_per_parent

    @classmethod
    def from_selection(cls, selection: Selection) -> BestLineages:
        return cls(selection.parents, selection.max_children_per_parent)

    def select(self, trials: list[FrozenTrial], slots: int, score: Score, pareto: set[int] | None) -> list[FrozenTrial]:
        ranked = sorted(trials, key=lambda t: (pareto is not None and t.number not in pareto, score(t), t.number))
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


def may_parent(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a child (or the final phase) may start from: completed, with a checkpoint."""
    return [t for t in trials if TrialRecord.from_trial(t).done]


def make_selector(selection: Selection) -> ParentSelector:
    """The selector a space's ``selection`` names, configured by it; ConfigError for a name no
    selector registered."""
    if selection.selector not in SELECTORS:
        raise ConfigError(f"selection.selector: unknown selector {selection.selector!r}; known: "
                          f"{', '.join(sorted(SELECTORS))} (a ParentSelector subclass with a name adds one)")
    return SELECTORS[selection.selector].from_selection(selection)
