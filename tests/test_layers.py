"""The layer picture of docs/architecture.md, checked on the source: every import
points down, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "actionstate"

LAYERS: dict[str, set[str]] = {
    # unit (top-level module or package) -> the units it may import
    "errors": set(),
    "events": {"errors"},
    "private": set(),
    "records": {"errors", "events"},
    "checkpoint": {"errors"},
    "llm": {"errors", "retry"},
    "retry": {"errors"},
    "memory": {"errors", "records"},
    "context": {"events", "memory", "retry"},
    "agent": {"errors", "events", "context"},
    "loader": {"errors", "agent"},
    "eventlog": {"errors", "events", "records"},
    "stores": {"errors", "records", "checkpoint", "private"},
    "durable": {"errors", "events", "records", "checkpoint", "memory", "context", "agent",
                "eventlog", "stores", "retry"},
    "connectors": {"errors", "records", "eventlog", "stores"},
    "runners": {"errors", "private", "records", "checkpoint", "memory", "agent", "eventlog",
                "durable", "stores", "connectors", "loader", "retry", "telemetry"},
    "inspection": {"errors", "records", "checkpoint", "runners", "stores"},
    "testing": {"errors", "events", "records", "checkpoint", "llm", "stores", "durable",
                "agent"},
    "demo": {"", "llm", "runners"},
    "telemetry": {"errors", "durable"},
    "api": {"errors", "agent", "connectors", "durable", "eventlog", "retry", "runners",
            "stores", "telemetry"},
    "cli": {"errors", "records", "durable", "eventlog", "loader", "runners", "stores", "inspection",
            "demo", "retry", "api", "telemetry"},
    "": {"agent", "context", "durable", "errors", "events", "memory", "stores", "retry", "api",
         "connectors"},
    "__main__": {"cli"},
}
"""``""`` is the package itself (``actionstate/__init__.py``: the user API)."""


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
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
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
