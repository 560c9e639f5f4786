"""The package's shape: no import cycles between its modules, no two classes of one name, every
third-party module it imports declared in pyproject.toml and every declared dependency used.

Read statically (ast): module-level imports only, as Python runs them at import time; imports
under ``if TYPE_CHECKING:`` and inside functions (deliberately deferred, e.g. llama_cpp only in
the engine's child) do not count.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
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


# Declared for a module we do not import by name: (distribution, why)
INDIRECT = {"protobuf": "sentencepiece's sentencepiece_model_pb2 (testmodels/tokenizer.py) imports google.protobuf",
            # uvicorn's "auto" http and loop settings (serve/http/server.py) load them when installed
            "httptools": "uvicorn's HTTP parser", "uvloop": "uvicorn's event loop"}
# Optional modules (an extra) that a box without that extra has not installed: module -> distribution
NOT_INSTALLED_HERE = {"pynvml": "nvidia-ml-py"}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules the package imports anywhere (deferred imports included) -> the modules importing them."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top != "edgekit" and top not in sys.stdlib_module_names:
                    found[top].add(name)
    return found


def _declared() -> tuple[set[str], set[str]]:
    """(dependencies, optional extras' dependencies other than test) of pyproject.toml, normalised."""
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    extras = {d for extra, deps in project["optional-dependencies"].items() if extra != "test" for d in deps}
    return {_dist(d) for d in project["dependencies"]}, {_dist(d) for d in extras}


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_imported_third_party_module_is_a_declared_dependency_and_every_dependency_is_used():
    required, optional = _declared()
    providers = importlib.metadata.packages_distributions()
    used: set[str] = set()
    undeclared = []
    for module, importers in sorted(_third_party_imports().items()):
        dists = {_dist(d) for d in providers.get(module, [])} or {NOT_INSTALLED_HERE.get(module, "")} - {""}
        used |= dists
        if not dists & (required | optional):
            undeclared.append(f"{module} (from {', '.join(sorted(importers))}; installed by {dists or 'nothing'})")
    assert undeclared == []
    assert required - used - set(INDIRECT) == set()
