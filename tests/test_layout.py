"""The tree's shape: no import circle among fedq's modules, fedq imports no Flower, the Flower apps stay thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for child in block.body for node in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def fedq_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (REPO / "fedq").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
                parent = imported.rpartition(".")[0]  # importing fedq.a.b runs fedq/a/__init__.py first,
                while parent:  # unless the importer lives in that package (its __init__ runs before it)
                    if parent in modules and parent != name and not name.startswith(parent + "."):
                        targets.add(parent)
                    parent = parent.rpartition(".")[0]
        graph[name] = targets
    return graph


def test_no_import_circle_among_fedqs_modules():
    graph = fedq_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import circle: " + " -> ".join(cycle))
    assert len(graph) > 50  # the walk really saw the tree


@pytest.mark.e2e
def test_fedq_imports_no_flower_module_and_validating_a_config_imports_no_engine():
    assert not [name for name, path in ((module_name(p), p) for p in (REPO / "fedq").rglob("*.py"))
                if any(i == "flwr" or i.startswith("flwr.") for i in imports_of(path))]
    code = ("import sys; from fedq.config import compose_config, validate_config; validate_config(compose_config([])); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'ctranslate2', 'torchao', 'flwr', 'ray')"
            " or m.startswith('fedq.deploy.') and m != 'fedq.deploy.settings'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def code_lines(path: Path) -> int:
    """Lines of code: not blank, not a comment, not a docstring."""
    source = path.read_text()
    docstrings = {line for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant)
                  for line in range(node.body[0].lineno, node.body[0].end_lineno + 1)}
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def test_the_flower_apps_only_translate_messages():
    lines = sum(code_lines(p) for top in ("server", "clients") for p in (REPO / top).glob("*.py"))
    assert 50 < lines <= 150, lines
