"""The import graph of a package, read from its source (every import, also inside functions).

Used by the layering tests, and runnable to print a package's graph, back-edges and cycles:
``python -m tests.import_graph control_plane``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, known: set[str], root: Path = REPO) -> set[str]:
    """Modules of ``known`` that ``path`` imports; ``from pkg import mod`` counts as ``pkg.mod``."""
    current = module_name(path, root)
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    # Imports for type annotations only (``if TYPE_CHECKING:``) create no runtime dependency.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, current, path.name == "__init__.py")
            names = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for name in names:
            # The longest known prefix: `from a.b import C` -> a.b, `from a import b` -> a.b.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != current:
                found.add(name)
    return found


def graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}``; packages (``__init__``) included."""
    paths = [p for p in (root / package).rglob("*.py") if "gen" not in p.parts]
    known = {module_name(p, root) for p in paths}
    edges = {module_name(p, root): imports_of(p, known, root) for p in paths}
    # An __init__ that imports nothing is a namespace label, not a dependency: `from a import b`
    # resolving to package `a` is the import of `a.b` (already recorded), so drop bare packages.
    for mod, deps in edges.items():
        edges[mod] = {d for d in deps if not (d.count(".") < mod.count(".") and mod.startswith(d))}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def print_graph(package: str, edges: dict[str, set[str]], bad: Iterable[str]) -> None:
    for mod in sorted(edges):
        print(f"{mod} -> {', '.join(sorted(edges[mod])) or '-'}")
    n_edges = sum(len(v) for v in edges.values())
    bad = list(bad)
    found = cycles(edges)
    print(
        f"\n{package}: {len(edges)} modules, {n_edges} imports, {len(bad)} back-edges, "
        f"{len(found)} cycles"
    )
    for b in bad:
        print("  back-edge:", b)
    for c in found:
        print("  cycle:", " <-> ".join(c))


if __name__ == "__main__":
    from tests.control_plane.test_layering import violations

    pkg = sys.argv[1] if len(sys.argv) > 1 else "control_plane"
    g = graph(pkg)
    print_graph(pkg, g, violations(g) if pkg == "control_plane" else [])
