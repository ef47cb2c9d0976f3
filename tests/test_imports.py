"""The package's import structure, read from the source (AST), not by importing it.

Every import points down: the graph of rewardtune's modules has no cycle, and neither has the coarser
graph where each subpackage (data, model, tasks, report) is one node, so e.g. `data` never imports
`tasks`. No function imports a rewardtune module at call time, except the CLI's subcommands (they load
their library on demand, so `rewardtune --help` does not load torch). The core never imports a task
module: only `rewardtune.tasks` (the registry) and `rewardtune.tasks.base` (the Task contract).
"""
import ast
import os
import subprocess
import sys

import rewardtune

ROOT = os.path.dirname(rewardtune.__file__)
PACKAGE = "rewardtune"
# Modules whose functions may import rewardtune modules at call time, and why (never to dodge a cycle).
CALL_TIME_IMPORTS = {"rewardtune.cli": "subcommands load their library on demand: `rewardtune --help` stays fast"}


def module_files() -> dict:
    """{dotted module name: path} of every .py file of the package."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
    return out


def imported_modules(node, module: str, is_package: bool, modules: dict) -> list:
    """The rewardtune modules an Import / ImportFrom node loads (a name that is a submodule counts as it)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if is_package else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        source = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
    return [n for n in names if n in modules]


def import_graph():
    """({module: set of modules it imports, at load or call time}, [(module, function, imported module)] of
    the imports made at call time, inside a function)."""
    modules = module_files()
    graph, call_time = {m: set() for m in modules}, []
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(inner): fn.name for fn in functions for inner in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = imported_modules(node, module, is_package, modules)
                graph[module].update(t for t in targets if t != module)
                if id(node) in nested:
                    call_time += [(module, nested[id(node)], t) for t in targets]
    return graph, call_time


def find_cycle(graph: dict):
    """One cycle of the graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer(module: str) -> str:
    """A subpackage of rewardtune (rewardtune.tasks.detection.codec -> rewardtune.tasks), else the module."""
    parts = module.split(".")
    package = ".".join(parts[:2])
    return package if len(parts) > 2 or os.path.isdir(os.path.join(ROOT, *parts[1:2])) else module


def test_the_graph_reader_sees_imports_cycles_and_call_time_imports():
    """The checks below would fail on a package with a cycle or a call-time import (guards the reader)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph, call_time = import_graph()
    assert {"rewardtune.errors", "rewardtune.config"} <= graph["rewardtune.recipes"]
    assert "rewardtune.tasks.base" in graph["rewardtune.tasks"]  # `from .base import Task` in a package
    assert "rewardtune.checkpoint" in graph["rewardtune.evaluate"]  # `from . import checkpoint`
    assert ("rewardtune.cli", "cmd_report", "rewardtune.report.html") in call_time
    assert layer("rewardtune.tasks.detection.codec") == "rewardtune.tasks" and layer("rewardtune.cli") == "rewardtune.cli"


def test_no_import_cycle_between_modules():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_cycle_between_subpackages():
    graph, _ = import_graph()
    coarse = {}
    for module, targets in graph.items():
        coarse.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert find_cycle(coarse) is None, " -> ".join(find_cycle(coarse))


def test_no_call_time_import_of_rewardtune_modules():
    _, call_time = import_graph()
    unexplained = [f"{m}.{fn} imports {t}" for m, fn, t in call_time if m not in CALL_TIME_IMPORTS]
    assert not unexplained, unexplained


def test_the_core_never_imports_a_task_module():
    graph, _ = import_graph()
    contract = {"rewardtune.tasks", "rewardtune.tasks.base"}
    leaks = [f"{m} imports {t}" for m, targets in graph.items() if not m.startswith("rewardtune.tasks")
             for t in targets if t.startswith("rewardtune.tasks") and t not in contract]
    assert not leaks, leaks


def test_the_cli_call_time_imports_keep_help_free_of_torch():
    """The reason CALL_TIME_IMPORTS gives for the CLI holds: `rewardtune --help` does not load torch."""
    code = ("import sys\nfrom rewardtune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(ROOT)}).stdout
    assert out.strip().splitlines()[-1] == "False"
