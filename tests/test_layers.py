"""The layer table of docs/architecture.md, checked on the source: every import
points down, the table names only imports that exist, and no module imports itself
back through others."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "actionstate"

DOC = SRC.parents[1] / "docs" / "architecture.md"
TABLE = "<!-- layers: the rule; tests/test_layers.py reads this table -->"


def _layers() -> dict[str, set[str]]:
    """The layer table of docs/architecture.md: unit (top-level module or package; ``""``
    is the package itself, ``actionstate/__init__.py``) -> the units it may import."""
    lines = DOC.read_text().split(TABLE, 1)[1].strip().splitlines()[2:]
    layers: dict[str, set[str]] = {}
    for line in lines:
        if not line.startswith("|"):
            break
        unit, allowed = (cell.strip() for cell in line.strip("|").split("|"))
        names = re.findall(r"`([^`]+)`", allowed)
        layers[_name(unit)] = {_name(f"`{n}`") for n in names if n != "__init__"}
    return layers


def _name(cell: str) -> str:
    name = re.findall(r"`([^`]+)`", cell)[0]
    return "" if name == "actionstate" else name


LAYERS = _layers()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> dict[str, set[str]]:
    """Module name -> the actionstate modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{name}: a relative import; use the absolute name")
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("actionstate"):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("actionstate")}
        graph[name] = found
    return graph


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for module, imported in sorted(_imports().items()):
        unit = _unit(module)
        assert unit in LAYERS, f"{module}: add its unit to the layer table (and the docs)"
        for target in sorted(imported):
            other = _unit(target)
            if other != unit and other not in LAYERS[unit]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_layer_table_names_only_imports_that_exist() -> None:
    """The table is exact: a unit's row names no unit it does not import."""
    used: dict[str, set[str]] = {unit: set() for unit in LAYERS}
    for module, imported in _imports().items():
        used[_unit(module)] |= {_unit(t) for t in imported} - {_unit(module)}
    stale = {unit: sorted(allowed - used[unit]) for unit, allowed in LAYERS.items()
             if allowed - used[unit]}
    assert not stale, f"rows of the layer table in {DOC.name} naming unused imports: {stale}"


def test_no_import_cycle() -> None:
    graph = _imports()
    known = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in map(resolve, targets) if t and t != m}
             for m, targets in graph.items()}
    # packages import their submodules and vice versa only through the package's
    # __init__ (the user API); a cycle that runs through a package __init__ that
    # merely re-exports is still a cycle, so it is reported too.
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append([*visiting[visiting.index(node):], node])
            return
        visiting.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for module in sorted(edges):
        visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


MOST_LINES = 420
"""No module over about 400 lines (issue 8): a longer one has a seam to split along."""


def test_no_module_is_longer_than_about_400_lines() -> None:
    long = {str(path.relative_to(SRC)): n for path in SRC.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MOST_LINES}
    assert not long, f"modules over {MOST_LINES} lines: {long}"
