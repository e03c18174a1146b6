"""What every command's output shares: a console that never wraps a pipe, durations, plurals."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

PIPE_WIDTH = 10_000  # a pipe or a file is never wrapped: one record, one line


def console(**options: Any) -> Console:
    """A rich console: a terminal's own width; in a pipe or a file, lines as long as they are
    (rich would otherwise wrap them at 80 columns, mid-word)."""
    stream = sys.stderr if options.get("stderr") else sys.stdout
    if stream.isatty():
        return Console(**options)
    return Console(width=PIPE_WIDTH, soft_wrap=True, **options)


def duration(seconds: float) -> str:
    """``42`` -> ``"42 s"``, ``185`` -> ``"3 min 05 s"``, ``3725`` -> ``"1 h 02 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plural(n: float, word: str, many: str | None = None) -> str:
    """``plural(1, "step")`` -> ``"1 step"``, ``plural(3, "step")`` -> ``"3 steps"``,
    ``plural(2, "child", "children")`` -> ``"2 children"``."""
    return f"{n:g} {word if n == 1 else many or word + 's'}"
