"""The example modules (A)-(D) of Fig. 2 of Wei, Wang, Chen (2017), ``s`` = source, ``t`` = sink.

(A)-(C) are only drawn in the paper; these are our readings (docs/design.md#modules-a-d), with
the property the paper names (simple morphable) and kernels chosen so that no source-to-sink path
stacks two convs wider than 1x1 (so a realised module is exact at image borders too):

- (A) ``F1 s->a`` 1x1, ``F2 a->t`` 3x3, ``F3 s->t`` 1x1 (a residual block with a 1x1 skip);
- (B) ``F1 s->a`` 1x1, ``F2 a->t`` 3x3, ``F3 s->b`` 3x3, ``F4 b->t`` 1x1, ``F5 s->t`` 1x1;
- (C) ``F1 s->a`` 1x1, ``F2 a->b`` 1x1, ``F3 b->t`` 3x3, ``F4 a->t`` 3x3;
- (D) eq. 6, ``G = F5 ⊛ F1 + F6 ⊛ (F3 ⊛ F1 + F4 ⊛ F2) + F7 ⊛ F2``: ``F1 s->a``, ``F2 s->b``,
  ``F3 a->c``, ``F4 b->c``, ``F5 a->t``, ``F6 c->t``, ``F7 b->t``, F1-F4 1x1 and F5-F7 3x3.
  Not simple morphable (Proposition 7): neither check of Algorithm 1 fires.

``MODULES`` holds frozen graphs (networkx raises on an attempt to modify them); ``module(name)``
returns a fresh, mutable copy.
"""

from __future__ import annotations

import networkx as nx

from morphnas.modules.algebra import make_module

__all__ = ["MODULES", "module"]

_SPECS: dict[str, list[tuple[str, str, str, int]]] = {
    "A": [("F1", "s", "a", 1), ("F2", "a", "t", 3), ("F3", "s", "t", 1)],
    "B": [
        ("F1", "s", "a", 1),
        ("F2", "a", "t", 3),
        ("F3", "s", "b", 3),
        ("F4", "b", "t", 1),
        ("F5", "s", "t", 1),
    ],
    "C": [("F1", "s", "a", 1), ("F2", "a", "b", 1), ("F3", "b", "t", 3), ("F4", "a", "t", 3)],
    "D": [
        ("F1", "s", "a", 1),
        ("F2", "s", "b", 1),
        ("F3", "a", "c", 1),
        ("F4", "b", "c", 1),
        ("F5", "a", "t", 3),
        ("F6", "c", "t", 3),
        ("F7", "b", "t", 3),
    ],
}


def module(name: str) -> nx.MultiDiGraph:
    """A fresh copy of module ``name`` ("A", "B", "C" or "D")."""
    if name not in _SPECS:
        raise KeyError(f"no module {name!r}; known: {sorted(_SPECS)}")
    return make_module(_SPECS[name])


MODULES: dict[str, nx.MultiDiGraph] = {name: nx.freeze(module(name)) for name in _SPECS}
