"""The package's import graph: no cycle between modules, and the layers import one way.

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` statement of a ``morphnas`` module counts, at module level and inside
functions alike (a lazy import defers a dependency, it does not remove it; a cycle through one
still means neither module can be understood without the other), ``if TYPE_CHECKING:`` blocks
included. ``from a.b import c`` is an edge to the module ``a.b.c`` when there is one, else to
``a.b``. Importing ``a.b.c`` first runs the packages ``a.b`` and ``a``, so the edge also goes to
those ``__init__`` modules, except to the importer's own ancestor packages (a submodule reading a
sibling does not re-enter its package). That is how ``grammar/__init__`` -> ``morphnet.rules`` ->
``grammar.rules`` was a cycle although ``grammar.rules`` never named ``morphnet``.

The layers are the subpackages (and top-level modules) of ``morphnas``; each may import only the
layers listed in ``ALLOWED``, which is ARCHITECTURE.md's table (docs/design.md#layering says why):
``ir <- modules <- morph <- grammar <- search``, ``train`` and ``execute`` knowing nothing of
morphs, every layer free to import ``errors``, ``cli`` on top and imported by nobody.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx

import morphnas

PACKAGE = Path(morphnas.__file__).parent

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "ir": {"errors"},
    "modules": {"errors"},
    "morph": {"errors", "ir", "modules"},
    "grammar": {"errors", "ir", "modules", "morph"},
    "train": {"errors", "ir"},
    "execute": {"errors", "ir", "train"},
    "morphnet": {"errors", "ir", "morph", "train"},
    "export": {"errors", "ir", "train", "morphnas"},
    "search": {"errors", "ir", "modules", "morph", "grammar", "train", "execute"},
    "report": {"errors", "ir", "search", "train"},
    "cli": {"errors", "ir", "modules", "morph", "grammar", "train", "execute", "morphnet", "export", "search",
            "report", "morphnas"},
    "morphnas": set(),  # the root __init__ imports its API lazily, by name (importlib)
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, importer: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = importer.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        names = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules:
            out.append(name)
    return out


def import_graph() -> nx.DiGraph:
    """``importer -> imported`` over every module of the package (see the module docstring)."""
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, name, path.name == "__init__.py", modules):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep != name and dep not in own and dep in modules:
                        graph.add_edge(name, dep)
    return graph


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_cycle():
    graph = import_graph()
    assert graph.number_of_nodes() > 50 and graph.number_of_edges() > 100  # the walk found the package
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise AssertionError("import cycle: " + " -> ".join([u for u, _ in cycle] + [cycle[0][0]]))


def test_layers_import_one_way():
    graph = import_graph()
    assert set(map(layer, graph)) <= set(ALLOWED), sorted(set(map(layer, graph)) - set(ALLOWED))
    wrong = sorted(
        f"{u} -> {v}" for u, v in graph.edges if layer(u) != layer(v) and layer(v) not in ALLOWED[layer(u)]
    )
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_the_walk_sees_a_cycle(tmp_path, monkeypatch):
    """The detector itself: a package whose __init__ imports a module that imports a sibling package."""
    root = tmp_path / "morphnas"
    for rel, text in {
        "__init__.py": "",
        "a/__init__.py": "from morphnas.b import rules\n",
        "a/rules.py": "",
        "b/__init__.py": "",
        "b/rules.py": "def f():\n    from morphnas.a.rules import x\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", root)
    cycle = nx.find_cycle(import_graph())
    assert {u for u, _ in cycle} == {"morphnas.a", "morphnas.b.rules"}
