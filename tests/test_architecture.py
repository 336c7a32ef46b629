"""DESIGN.md's layering, read from the code: pillars never import the application (pipeline, report, cli)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fortify"
PILLARS = ("attacks", "certify", "compress", "data", "evaluate", "models", "train")
APPLICATION = ("fortify.pipeline", "fortify.report", "fortify.cli")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, lazy ones inside functions included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "fortify":
                found += [(node.lineno, f"fortify.{a.name}") for a in node.names]
    return found


@pytest.mark.parametrize("pillar", PILLARS)
def test_pillar_never_imports_the_application(pillar: str) -> None:
    bad = [f"{f.relative_to(SRC)}:{line} imports {mod}" for f in sorted((SRC / pillar).rglob("*.py"))
           for line, mod in _imports(f) if mod.startswith(APPLICATION)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_and_aliased_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from fortify import pipeline as p\n    import fortify.cli\n")
    assert [m for _, m in _imports(f)] == ["fortify", "fortify.pipeline", "fortify.cli"]


def _import_graph() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_graph", SRC.parents[1] / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_between_units_and_no_new_upward_import() -> None:
    ig = _import_graph()
    e = ig.edges(SRC)  # type: ignore[attr-defined]
    graph: dict[str, set[str]] = {}
    for a, b in e:
        graph.setdefault(a, set()).add(b)
    assert ig.cycles(graph) == []  # type: ignore[attr-defined]
    up = sorted((a, b) for a, b in e if ig.layer(b) > ig.layer(a))  # type: ignore[attr-defined]
    # the one known upward edge: distributed.fit accepts a recipe name (application convenience in train)
    assert up == [("train", "config")], up
