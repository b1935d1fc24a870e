"""The package's import graph: no circle, and no module imports from a floor above its own.

Floors, lowest first: ``runtime`` < ``configdoc``, ``schema``, ``presets``, ``config`` and the results
layout < ``data`` < ``router`` < ``select``, ``train``, ``index`` (peers that do not import each other)
< ``report`` < ``stages`` < ``cli`` and ``cliargs``. Every import counts, also one inside a function: a
local import that hides a circle is still a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.workflow import REPO

PACKAGE = REPO / "selectflow"
# top-level modules and subpackages of selectflow/, by floor; a new one must be placed here
FLOORS = {
    "__init__": 0,
    "runtime": 0,
    "configdoc": 1,
    "config": 1,
    "schema": 1,
    "presets": 1,
    "layout": 1,
    "data": 2,
    "router": 3,
    "select": 4,
    "train": 4,
    "index": 4,
    "report": 5,
    "stages": 6,
    "cli": 7,
    "cliargs": 7,
    "__main__": 7,
}
PEERS = {"select", "train", "index"}  # one floor, three stages of the chain that share nothing


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The selectflow modules ``name`` imports (``from a import b`` counts b when b is a module, else a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import selectflow.a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def floor(name: str) -> tuple[int, str]:
    """(floor, group) of a module: group is its top-level subpackage or module below selectflow."""
    parts = name.split(".")
    group = parts[1] if len(parts) > 1 else "__init__"
    if group not in FLOORS:
        pytest.fail(f"selectflow.{group} has no floor: place it in FLOORS of {__file__}")
    return FLOORS[group], group


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_local_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a circle made of function-level imports is found, and a relative import resolves."""
    pkg = tmp_path / "selectflow"
    (pkg / "router").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "router" / "__init__.py").write_text("")
    (pkg / "router" / "a.py").write_text("def f():\n    from selectflow.router import b\n")
    (pkg / "router" / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    edges = graph()
    assert edges["selectflow.router.a"] == {"selectflow.router.b"}
    assert edges["selectflow.router.b"] == {"selectflow.router.a"}
    assert circles(edges) == [["selectflow.router.a", "selectflow.router.b"]]


def test_no_import_circle():
    assert circles(graph()) == []


def test_no_import_from_a_floor_above_or_between_peers():
    wrong = []
    for name, targets in graph().items():
        level, group = floor(name)
        for target in sorted(targets):
            target_level, target_group = floor(target)
            if target_level > level or (group in PEERS and target_group in PEERS and target_group != group):
                wrong.append(f"{name} (floor {level}) imports {target} (floor {target_level})")
    assert wrong == []
