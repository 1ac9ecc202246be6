"""Imports run one way: no module of the package imports one that (directly or through others)
imports it back, counting every import (top level, inside functions, under TYPE_CHECKING).

``from package import name`` is an edge to the submodule ``package.name`` when that is a module,
else to the package; a package's ``__init__`` may import its own children.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# The intended layering (docs/design.md §1): a module may import only from its own layer or
# from the layers listed for it. Keys and values are top-level names under depthattn.
LEAVES = {"utils", "ops", "data"}
# Leaves inside the model package: the config and its name tables import no other part of it.
MODEL_LEAVES = ("depthattn.model.config", "depthattn.model.qwen3_names",
                "depthattn.model.deepseek_v3_names")


def module_files() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in sorted((SRC / "depthattn").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        edges.add(sub)
                    elif target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "depthattn.model.decoder" in graph
    assert "depthattn.methods.registry" in graph["depthattn.model.decoder"] or \
        "depthattn.methods" in graph["depthattn.model.decoder"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_detector_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_leaves(leaf):
    """ops, data and utils never import model, methods, train, eval, analysis, hf or the CLI."""
    graph = import_graph()
    for name, edges in graph.items():
        if name == f"depthattn.{leaf}" or name.startswith(f"depthattn.{leaf}."):
            above = sorted(e for e in edges if e.count(".") == 0 or e.split(".")[1] not in LEAVES)
            assert not above, f"{name} imports {above}"


def test_model_config_is_a_leaf():
    """The config and its Qwen3 and DeepseekV3 name tables import only leaves and each other."""
    for name, edges in import_graph().items():
        if name in MODEL_LEAVES:
            above = sorted(e for e in edges if e not in MODEL_LEAVES
                           and (e.count(".") == 0 or e.split(".")[1] not in LEAVES))
            assert not above, f"{name} imports {above}"


def test_methods_read_only_the_config_and_schedule_of_the_model():
    """Methods plug into the model: they see its config, its looped schedule and its norm, never its
    modules."""
    allowed = {*MODEL_LEAVES, "depthattn.model.looped", "depthattn.model.norm"}
    for name, edges in import_graph().items():
        if name.startswith("depthattn.methods"):
            model = {e for e in edges if e.startswith("depthattn.model")}
            assert model <= allowed, (name, sorted(model - allowed))


@pytest.mark.parametrize("layer", ["model", "methods"])
def test_the_core_imports_no_application_layer(layer):
    """model and methods (the core) never import train, eval, analysis, experiments, hf, io or
    the CLI: those sit on the core, not under it."""
    above = {"train", "eval", "analysis", "experiments", "hf", "io", "cli"}
    for name, edges in import_graph().items():
        if name == f"depthattn.{layer}" or name.startswith(f"depthattn.{layer}."):
            bad = sorted(e for e in edges if e.count(".") >= 1 and e.split(".")[1] in above)
            assert not bad, f"{name} imports {bad}"
