"""Progress inside a search phase, read from the search's events: the children running, each at
its epoch, and how long the phase and the time budget have left. ``morphnas search`` shows it
(``LiveView`` in a terminal, ``EventLog`` in a pipe; see :mod:`morphnas.cli.search`).

The ``epoch`` event, sent after every finished epoch of every child, carries ``trial``,
``epoch``, ``epochs`` (the most its run, or its rung of successive halving, trains; None when
unknown), ``val_error``, ``elapsed`` (seconds since the search started, a resumed search's
earlier drivers included) and ``budget`` (the time budget in seconds, or None). The
``seed``, ``final`` and ``generation`` events start a phase; their ``seconds`` is its planned
length (None when unknown: no time budget for the seed and final phase).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from morphnas.cli.output import duration


@dataclass
class Child:
    """A running child: when it started (on the progress clock), its last epoch of how many and its error."""

    started: float
    epoch: int = 0
    epochs: float | None = None
    val_error: float | None = None


class Progress:
    """The running phase and children, kept up to date by :meth:`update` with every event.

    ``clock`` is the monotonic clock the phase's and the children's times are read on.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.phase = ""  # "seed", "generation 2", "final phase"
        self.phase_started = clock()
        self.phase_seconds: float | None = None  # the phase's planned wall-clock length, when known
        self.phase_epochs: float | None = None  # the epochs of the one network of the seed or final phase
        self.children: dict[int, Child] = {}
        self.elapsed: tuple[float, float] | None = None  # (seconds since the search's start, clock) at the last epoch
        self.budget: float | None = None

    def update(self, kind: str, info: dict[str, Any]) -> None:
        now = self.clock()
        if kind in ("seed", "final", "generation"):
            self.phase = {"seed": "seed", "final": "final phase"}.get(kind, f"generation {info.get('generation')}")
            self.phase_started, self.children = now, {}
            self.phase_seconds, self.phase_epochs = info.get("seconds"), None
            if kind != "generation":  # a generation's epochs are each child's, not the phase's
                self.phase_epochs = info["epochs"]
                self.children[info["trial"]] = Child(now)
        elif kind == "child":
            self.children[info["trial"]] = Child(now)
        elif kind == "epoch":
            child = self.children.setdefault(info["trial"], Child(self.phase_started))
            child.epoch, child.epochs, child.val_error = info["epoch"], info.get("epochs"), info["val_error"]
            self.elapsed, self.budget = (info["elapsed"], now), info["budget"]
        elif kind in ("done", "failed", "pruned"):
            self.children.pop(info["trial"], None)

    def phase_left(self) -> float | None:
        """Seconds the phase has left: the shorter of what its planned wall-clock length leaves
        and what the seed's or final phase's one network's remaining epochs take at their pace so
        far; None when neither is known."""
        now = self.clock()
        estimates = []
        if self.phase_seconds is not None:
            estimates.append(self.phase_seconds - (now - self.phase_started))
        if self.phase_epochs is not None and len(self.children) == 1:
            child = next(iter(self.children.values()))
            if child.epoch > 0:
                estimates.append((now - child.started) / child.epoch * (self.phase_epochs - child.epoch))
        return max(0.0, min(estimates)) if estimates else None

    def budget_status(self) -> str | None:
        """``"3 min 40 s of 10 min 00 s, 6 min 20 s left"`` (``"3 min 40 s, no time budget"``);
        None before the first epoch."""
        if self.elapsed is None:
            return None
        elapsed = self.elapsed[0] + self.clock() - self.elapsed[1]
        if self.budget is None or math.isinf(self.budget):
            return f"{duration(elapsed)}, no time budget"
        return f"{duration(elapsed)} of {duration(self.budget)}, {duration(self.budget - elapsed)} left"

    def status(self) -> str:
        """The phase and its time left, then the budget: one line."""
        left = self.phase_left()
        parts = [self.phase + ("" if left is None else f" ~{duration(left)} left")]
        budget = self.budget_status()
        if budget is not None:
            parts.append(f"search {budget}")
        return "; ".join(p for p in parts if p)

    def running(self) -> list[str]:
        """:meth:`child_line` of every running child, read from a copy: a live display's refresh
        thread calls this while events change the children."""
        return [self.child_line(trial, child) for trial, child in list(self.children.items())]

    def child_line(self, trial: int, child: Child | None = None) -> str:
        """``"trial 7: epoch 3 of 4, val error 1.20%, 1 min 02 s in"``: a running child's progress
        (``of N`` when its run's epochs are known; a fractional last epoch counts as one)."""
        child = child or self.children[trial]
        if child.epoch == 0:
            return f"trial {trial}: first epoch, {duration(self.clock() - child.started)} in"
        of = "" if child.epochs is None else f" of {math.ceil(child.epochs)}"
        error = "" if child.val_error is None else f", val error {child.val_error:.2%}"
        return f"trial {trial}: epoch {child.epoch}{of}{error}, {duration(self.clock() - child.started)} in"
