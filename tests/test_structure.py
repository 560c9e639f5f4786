"""The package's shape: no import cycles between its modules, no two classes of one name.

Read statically (ast): module-level imports only, as Python runs them at import time; imports
under ``if TYPE_CHECKING:`` and inside functions (deliberately deferred, e.g. llama_cpp only in
the engine's child) do not count.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgekit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(name: str, path: Path) -> set[str]:
    """The edgekit modules ``name`` imports when it is imported."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {_owner(m) for m in found if _owner(m)} - {name}


def _import_time_nodes(body: list[ast.stmt]) -> list[ast.stmt]:
    nodes: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes += _import_time_nodes(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
            nodes += _import_time_nodes(node.body) + _import_time_nodes(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                nodes += _import_time_nodes(handler.body)
        else:
            nodes.append(node)
    return nodes


def _owner(dotted: str) -> str | None:
    """The module a dotted import name lands in (``edgekit.plan.Settings`` -> ``edgekit.plan``)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_module_imports_itself_back_through_others():
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items()}
    # a package's __init__ importing its own modules is how packages work, not a cycle to break
    graph = {n: {m for m in deps if not (MODULES[n].name == "__init__.py" and m.startswith(n + "."))}
             for n, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_known_pairs_are_one_way():
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items()}
    for a, b in [("edgekit.plan", "edgekit.memory"), ("edgekit.engine.generate", "edgekit.engine.worker")]:
        assert not (b in graph[a] and a in graph[b]), f"{a} and {b} import each other"


def test_no_two_classes_share_a_name():
    """A reader who meets ``Measurement`` or ``Job`` should not have to ask which one (a module's
    private ``_Name`` may share a public one's word: it cannot be imported by mistake)."""
    where: dict[str, list[str]] = defaultdict(list)
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(name)
    assert {n: m for n, m in where.items() if len(m) > 1} == {}
