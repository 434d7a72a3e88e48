"""The task packages form layers: no package imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def package_imports() -> dict[str, set[str]]:
    """Each `vad.tasks` subpackage -> the other subpackages its modules import (at any depth in a function)."""
    graph: dict[str, set[str]] = {}
    for folder in sorted(p for p in TASKS.iterdir() if (p / "__init__.py").exists()):
        deps: set[str] = set()
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    parts = name.split(".")
                    if parts[:2] == ["vad", "tasks"] and len(parts) > 2 and parts[2] != folder.name:
                        deps.add(parts[2])
        graph[folder.name] = deps
    return graph


def test_task_packages_have_no_cycle():
    graph = package_imports()
    assert {"runtime", "learning", "inference"} <= set(graph)
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [name])}")
        if state.get(name) == 2 or name not in graph:
            return
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def test_runtime_sits_below_learning_and_inference():
    graph = package_imports()
    assert not graph["runtime"] & {"learning", "inference", "evaluation", "operations"}
    assert "inference" not in graph["learning"] and "learning" not in graph["inference"]


def test_the_ingest_flow_and_the_runners_load_without_torch():
    # torch's import costs every process that starts a flow 1-2 s; ingest never runs a model
    import subprocess
    import sys

    code = "import sys, vad.flows.ingest, vad.tasks.operations.runners; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
