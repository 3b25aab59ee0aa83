"""The package layout by side of the wire: who may import whom, and no import cycles (TYPE_CHECKING included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dbsync_cli"
SIDES = ("dbsync_cli.sender", "dbsync_cli.receiver")
#: what people use, on top of the public API: the CLI and the web console may call either side
FRONT_ENDS = ("dbsync_cli.cli", "dbsync_cli.console")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every dbsync_cli module `path` imports, anywhere in the file (function bodies and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("dbsync_cli", "devtools"):
                module = name
                while module not in known and "." in module:  # `from pkg import name` where name is no module
                    module = module.rsplit(".", 1)[0]
                found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def side(module: str) -> str | None:
    return next((s for s in SIDES if module == s or module.startswith(s + ".")), None)


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        mine = side(module)
        for target in sorted(targets):
            theirs = side(target)
            if target.startswith("devtools"):
                wrong.append(f"{module} imports dev tooling {target}")
            elif mine is not None and theirs is not None and mine != theirs:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
            elif target.startswith("dbsync_cli.cli") and not module.startswith(("dbsync_cli.cli", "dbsync_cli.__main__")):
                wrong.append(f"{module} imports the CLI module {target}")
            elif mine is None and theirs is not None and not module.startswith(FRONT_ENDS) \
                    and module != "dbsync_cli":
                wrong.append(f"shared module {module} imports {target} ({theirs})")
    return wrong


def test_the_checks_catch_what_they_are_for() -> None:
    """The checks themselves, on made-up graphs: a cycle and every kind of forbidden import is reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    bad = {
        "dbsync_cli.sender.enrich": {"dbsync_cli.receiver.state"},
        "dbsync_cli.receiver.apply": {"dbsync_cli.sender.enrich"},
        "dbsync_cli.wire": {"dbsync_cli.sender.enrich"},
        "dbsync_cli.receiver.rest": {"dbsync_cli.cli.common"},
        "dbsync_cli.db": {"devtools.services"},
    }
    assert len(layer_violations(bad)) == 5


def test_the_package_graph_is_what_the_checks_read() -> None:
    edges = graph()
    assert "dbsync_cli.receiver.state" in edges["dbsync_cli.receiver.apply"]
    assert "dbsync_cli.wire" in edges["dbsync_cli.sender.enrich"]


def test_no_module_imports_across_sides_or_upward() -> None:
    assert layer_violations(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []
