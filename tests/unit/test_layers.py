"""The house's rules, read from the source: which room may import which (docs/design.md#layers).

    core <- tasks <- flows <- cli        record and tracking: used by flows and cli only

Every import statement of every module counts, also the ones inside functions (a call-time import
is still a dependency, and a circle through one is still a circle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder in the tree -> its import name (pyproject.toml's package-dir)
FOLDERS = {"rlhf_core": "rlhf.core", "tasks": "rlhf.tasks", "flows": "rlhf.flows", "conf": "rlhf.conf",
           "rlhf": "rlhf"}
ROOMS = ("rlhf.core", "rlhf.tasks", "rlhf.flows", "rlhf.conf", "rlhf.record", "rlhf.tracking", "rlhf.cli",
         "rlhf.storage")
MAY_IMPORT = {
    "rlhf.core": {"rlhf.core"},
    "rlhf.tasks": {"rlhf.core", "rlhf.tasks", "rlhf.storage"},  # a task stages its output and uploads it
    "rlhf.record": {"rlhf.core", "rlhf.record"},
    "rlhf.storage": {"rlhf.core", "rlhf.record", "rlhf.storage"},  # campaign outputs on object storage
    "rlhf.tracking": {"rlhf.core", "rlhf.tracking", "rlhf.storage"},
    "rlhf.flows": {"rlhf.core", "rlhf.tasks", "rlhf.record", "rlhf.tracking", "rlhf.flows", "rlhf.conf",
                   "rlhf.storage"},
    "rlhf.conf": set(),
    "rlhf.cli": set(ROOMS),
    "rlhf": set(ROOMS),  # the package's own __init__ / __main__ start the CLI
}
NEVER = {"rlhf.core": {"prefect", "mlflow", "hydra", "omegaconf"},
         "rlhf.tasks": {"mlflow", "hydra", "omegaconf"},
         "rlhf.record": {"prefect", "mlflow", "hydra", "omegaconf"},
         "rlhf.storage": {"prefect", "mlflow", "hydra", "omegaconf"},
         "rlhf.tracking": {"prefect", "hydra", "omegaconf"}}
OLD_NAMES = {"rlhf_core", "tasks", "flows", "conf"}  # the folders' names, never import names


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))}


def imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports (relative imports resolved; ``from pkg import name`` counts as
    ``pkg.name`` when that is a module of the project, else ``pkg``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = sources()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def room(module: str) -> str | None:
    return next((r for r in ROOMS if module == r or module.startswith(r + ".")), "rlhf" if module == "rlhf" else None)


GRAPH = {module: imports(module, path) for module, path in sources().items()}


def test_every_source_module_is_in_a_room():
    assert all(room(module) or module in ("rlhf", "rlhf.__main__") for module in GRAPH), sorted(GRAPH)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers_only(module):
    mine = room(module) or "rlhf"
    wrong = sorted(name for name in GRAPH[module] if room(name) and room(name) not in MAY_IMPORT[mine])
    assert not wrong, f"{module} ({mine}) may not import {wrong}"
    banned = sorted(name for name in GRAPH[module] if name.split(".")[0] in NEVER.get(mine, set()))
    assert not banned, f"{module} ({mine}) may not import {banned}"
    old = sorted(name for name in GRAPH[module] if name.split(".")[0] in OLD_NAMES)
    assert not old, f"{module} imports the folders' names {old}: import them as rlhf.core, rlhf.tasks, ..."


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    graph = {m: {n for n in deps if n in GRAPH and n != m} for m, deps in GRAPH.items()}
    assert not circles(graph), f"import circles: {circles(graph)}"


def test_the_rules_catch_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself: a core module importing a task, and a pair importing each other, are caught."""
    core = tmp_path / "rlhf_core"
    core.mkdir()
    (core / "bad.py").write_text("from rlhf.tasks import steps\nimport mlflow\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = imports("rlhf.core.bad", core / "bad.py")
    assert "rlhf.tasks" in {room(n) for n in found} and "mlflow" in found
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_core_loads_no_orchestration_or_tracking():
    """At run time too: importing every core module pulls in none of prefect, mlflow, hydra, omegaconf."""
    code = ("import importlib, pkgutil, sys, rlhf.core\n"
            "for m in pkgutil.walk_packages(rlhf.core.__path__, 'rlhf.core.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted({n.split('.')[0] for n in sys.modules} & {'prefect', 'mlflow', 'hydra', 'omegaconf'})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
