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


# What the Flower apps may import: Flower, the standard library, numpy, and fedq's round as the library exposes it
# (settings, the message protocol, the round, the run folder). Training, codecs, models and data stay in fedq.
APP_IMPORTS = ("flwr", "numpy", "server", "fedq.config", "fedq.errors", "fedq.fl.protocol", "fedq.fl.rounds", "fedq.fl.run",
               "fedq.fl.client", "fedq.fl.settings", "fedq.fl.strategies", "fedq.fl.privacy", "fedq.report.run_log",
               "fedq.run_folder", "fedq.logs")
APP_FORBIDDEN = ("torch", "fedq.comm", "fedq.model", "fedq.quant", "fedq.engine", "fedq.data", "fedq.task", "ray")


def test_the_flower_apps_only_translate_messages():
    """The layering rule: server/ and clients/ import Flower and fedq's round, never what trains or encodes, and nothing
    in fedq imports them back."""
    stdlib = sys.stdlib_module_names
    for path in [*(REPO / "server").glob("*.py"), *(REPO / "clients").glob("*.py")]:
        for name in imports_of(path):
            top = name.split(".")[0]
            assert not name.startswith(APP_FORBIDDEN), f"{path.name} imports {name}: the Flower apps only translate messages"
            assert top in stdlib or name in ("__future__", "fedq.fl") or name.startswith(APP_IMPORTS), \
                f"{path.relative_to(REPO)} imports {name}, outside what a Flower app may import (APP_IMPORTS)"
    for path in (REPO / "fedq").rglob("*.py"):
        assert not [n for n in imports_of(path) if n.split(".")[0] in ("server", "clients")], f"{path} imports a Flower app"


@pytest.mark.parametrize("strategy", [["fl.strategy=fedadam"], ["fl.strategy=fedavgm", "fl.server_momentum=0.5"],
                                      ["fl.dp.clip=1", "fl.dp.noise_multiplier=1"]])
def test_flower_still_has_the_strategy_attributes_fedq_reads_and_writes(strategy):
    """server/aggregation.py sets a strategy's current model and saves its optimizer state through attributes Flower
    does not document; an upgrade that renames one must fail here, by name, not corrupt a resumed run."""
    import numpy as np

    from fedq.config import compose_config
    from server.aggregation import FlowerAggregator

    aggregator = FlowerAggregator(compose_config(strategy))
    vector = np.zeros(8, np.float32)
    for server_round in (1, 2):
        vector = aggregator(server_round, vector, [np.full(8, 0.1, np.float32), np.full(8, 0.3, np.float32)], [1.0, 1.0])
    held = [(aggregator.strategy, "current_arrays"), *((aggregator.inner, name) for name in aggregator.entry.optimizer_state),
            *([(aggregator.strategy, "clipping_norm")] if aggregator.private else [])]
    for strategy_object, name in held:  # the DP wrapper's current model; FedAdam's and FedAvgM's own and their state
        assert getattr(strategy_object, name, None) is not None, (
            f"flwr {__import__('flwr').__version__}: {type(strategy_object).__name__} has no attribute {name} any more; "
            "server/aggregation.py reads and writes it (fedq/fl/strategies.py optimizer_state, current_arrays): update "
            "them for this Flower")
    assert bool(aggregator.state_arrays()) == bool(aggregator.entry.optimizer_state) and not np.allclose(vector, 0)
