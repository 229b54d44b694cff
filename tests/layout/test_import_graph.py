"""The package's import graph: no module reaches itself through its imports (lazy imports
inside functions count too), and the layers import only downwards (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Package name -> folder: geoddu.cli lives in the top-level cli/ folder (pyproject.toml).
FOLDERS = {"geoddu": ROOT / "geoddu", "geoddu.cli": ROOT / "cli"}


def _modules() -> dict[str, Path]:
    mods = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join((package, *parts))] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports, anywhere in it (a lazy import is an edge too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known and n != name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    """The check below can fail: a three-module loop and a two-module one are found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50  # the walk saw the package
    assert cycles(graph) == []


# Layer -> the packages it must not import (the layers in docs/architecture.md).
FORBIDDEN = {
    "geoddu.models": ("geoddu.train", "geoddu.parallel", "geoddu.engine", "geoddu.io",
                      "geoddu.vectorize", "geoddu.cli"),
    "geoddu.train": ("geoddu.engine", "geoddu.cli"),
    "geoddu.parallel": ("geoddu.models", "geoddu.train", "geoddu.engine", "geoddu.cli"),
    "geoddu.engine": ("geoddu.train", "geoddu.cli"),
    "geoddu.io": ("geoddu.models", "geoddu.train", "geoddu.engine", "geoddu.vectorize",
                  "geoddu.cli"),
    "geoddu.vectorize": ("geoddu.models", "geoddu.train", "geoddu.engine", "geoddu.parallel",
                         "geoddu.cli"),
    # Accuracy assessment reads maps and vectors; it never needs a model or torch.
    "geoddu.accuracy": ("geoddu.models", "geoddu.train", "geoddu.engine", "geoddu.parallel",
                        "geoddu.cli"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    graph = import_graph()
    mine = [m for m in graph if m == layer or m.startswith(layer + ".")]
    assert mine
    bad = sorted((m, d) for m in mine for d in graph[m]
                 if any(d == f or d.startswith(f + ".") for f in FORBIDDEN[layer]))
    assert bad == []
