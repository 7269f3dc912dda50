"""The core's shape, checked: imports only go down the layers of docs/architecture.md, no cycle, and no
import tucked inside a function to hide one. Reads the source (ast); imports nothing of rollback/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "rollback"

# docs/architecture.md names these layers; a module not listed here fails the test (place it first).
LAYERS = {
    "primitives": 0,
    "records": 1,
    "resources": 2,
    "operations": 3,
    "integration": 4,
}
MODULE_LAYER = {
    **dict.fromkeys(["errors", "ids", "settings", "fsutil", "proc", "pg", "logbook", "progress", "readiness",
                     "sqlprobe", "notify", "render", "migrations_info", "http_probe", "archive", "app_command", "crypto", "keys",
                     "tree_seal"],
                    "primitives"),
    **dict.fromkeys(["manifest", "journal", "lock"], "records"),
    **dict.fromkeys(["resources", "snapshot_stats", "tree_index", "diff"], "resources"),
    **dict.fromkeys(["snapshot", "verify", "standby", "restore_steps", "restore", "cleanup", "retention", "canary",
                     "check", "fingerprint", "manager", "plan", "discarded", "discarded_summary", "carry_forward", "remote", "space", "drill"], "operations"),
    "flask": "integration",
}
# Imports deliberately made inside a function, to keep a heavy module off a light path; they still count as
# edges below (layers, cycles). Anything else imported inside a function may be hiding a cycle.
LAZY_IMPORTS = {
    ("restore", "restore_steps"): "the CLI and the console admit a restore without loading psycopg and the steps",
    ("remote.preflight", "remote.transfer"): "a restore from local artifacts never loads boto3",
}
# The in-app integration runs inside someone else's app: Flask and SQLAlchemy only.
INTEGRATION_MAY_IMPORT = {"readiness", "sqlprobe", "logbook", "errors", "ids"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, path: Path) -> list[str]:
    """The rollback modules an import statement names (dotted, relative to rollback/)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("rollback.") for a in node.names if a.name.split(".")[0] == "rollback"
                and a.name != "rollback"]
    if node.level == 0:
        if not (node.module or "").startswith("rollback"):
            return []
        base = (node.module or "").removeprefix("rollback").lstrip(".")
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join(package + ([node.module] if node.module else []))
    if node.module is None or not base:  # `from . import x, y`
        return [".".join(filter(None, [base, a.name])) for a in node.names]
    return [base]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    edges: dict[str, set[str]] = {}
    hidden: list[str] = []
    for path in sorted(CORE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _resolve(module, node, path)
            lazy = all((module, name) in LAZY_IMPORTS for name in names)
            if names and node.col_offset > 0 and not lazy and not _in_type_checking(tree, node):
                hidden.append(f"{path.relative_to(CORE.parent)}:{node.lineno} imports {', '.join(names)}")
            targets.update(names)
        edges[module] = {t for t in targets if t and t != module}
    return edges, hidden


def _in_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def _top(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    top = _top(module)
    if top not in MODULE_LAYER:
        pytest.fail(f"rollback/{module}: not placed in a layer (add it to MODULE_LAYER and docs/architecture.md)")
    return LAYERS[MODULE_LAYER[top]]


def _known(edges: dict[str, set[str]], name: str) -> str | None:
    """`name` may be a module or a name inside a module (`from .steps import db`)."""
    while name and name not in edges:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_inside_a_function():
    _edges, hidden = _graph()
    assert hidden == [], "imports of rollback modules inside functions (hiding a cycle?):\n" + "\n".join(hidden)


def test_imports_only_go_down():
    edges, _ = _graph()
    upward = []
    for module, targets in edges.items():
        if not module:
            continue  # rollback/__init__.py
        for target in targets:
            known = _known(edges, target)
            if known is None or not known:
                continue
            if _layer(known) > _layer(module):
                upward.append(f"{module} ({MODULE_LAYER[_top(module)]}) imports {known} "
                              f"({MODULE_LAYER[_top(known)]})")
    assert upward == [], "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges, _ = _graph()
    graph = {m: {k for t in ts if (k := _known(edges, t)) and k != m} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_app_integration_needs_only_light_primitives():
    edges, _ = _graph()
    extra = {_known(edges, t) for t in edges["flask"]} - INTEGRATION_MAY_IMPORT - {None}
    assert extra == set(), f"rollback.flask runs in the protected app: it may not import {sorted(extra)}"


def test_every_module_has_a_layer():
    edges, _ = _graph()
    for module in edges:
        if module:
            _layer(module)
