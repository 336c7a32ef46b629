"""fortify's own import graph, read from the source with ast (lazy imports inside functions included).

    python scripts/import_graph.py [SRC_DIR]        # default: src/fortify of this checkout

Imports under ``if TYPE_CHECKING:`` are left out (they never run). Prints, per unit (a subpackage such as ``attacks`` or a top-level module such as ``config``), the
units it imports; the imports that run *back up* the layering of DESIGN.md (a pillar importing the
application -- pipeline, report, cli -- or the kernel importing a pillar or the application); and
the import cycles between units (strongly connected components of the unit graph, with one file
and line per edge of each cycle so it can be found).
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

KERNEL = {"errors", "registry", "threat", "validation", "protocol", "io", "stats", "timing", "progress",
          "plotting", "__init__"}
PILLARS = {"attacks", "certify", "compress", "data", "evaluate", "models", "train", "explain", "audit", "mips",
           "metrics"}
APPLICATION = {"pipeline", "report", "cli", "config", "store", "store_db"}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fortify":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def edges(src: Path) -> dict[tuple[str, str], list[str]]:
    """``(from unit, to unit) -> ["file:line", ...]`` for every import between different units."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in sorted(src.rglob("*.py")):
        rel = f.relative_to(src)
        here = rel.parts[0].removesuffix(".py")
        tree = ast.parse(f.read_text(), str(f))
        typing_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If) and _is_type_checking(blk.test)
                       for stmt in blk.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: never imported at run time
                continue
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module] + ([f"fortify.{a.name}" for a in node.names] if node.module == "fortify" else [])
            for m in mods:
                u = unit_of(m)
                if u and u != here and not (here == "__init__" or u == "__init__"):
                    out[(here, u)].append(f"{rel}:{node.lineno}")
    return out


def layer(unit: str) -> int:
    return 0 if unit in KERNEL else 1 if unit in PILLARS else 2


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one unit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "fortify"
    e = edges(src)
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in e:
        graph[a].add(b)
    print("units and what they import:")
    for a in sorted(graph):
        print(f"  {a:12s} -> {', '.join(sorted(graph[a]))}")
    up = sorted((a, b) for a, b in e if layer(b) > layer(a))
    print(f"\nimports that run back up the layering (kernel < pillars < application): {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}: {', '.join(e[(a, b)][:3])}{' ...' if len(e[(a, b)]) > 3 else ''}")
    cyc = cycles(graph)
    print(f"\nimport cycles between units: {len(cyc)}")
    for comp in cyc:
        print(f"  {' <-> '.join(comp)}")
        for a in comp:
            for b in comp:
                if (a, b) in e:
                    print(f"    {a} -> {b}: {e[(a, b)][0]}{f' (+{len(e[(a, b)]) - 1})' if len(e[(a, b)]) > 1 else ''}")


if __name__ == "__main__":
    main()
