"""The package's floor plan: no import cycles, inference never imports training, a small package
root, and no function past 8 parameters or 60 lines (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "medseg"
ROOT_MODULES = {"__init__", "io", "config", "logs", "cli"}  # the shared ground (at most 6)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, known: set[str]) -> str | None:
    """The medseg module an import names (a package's ``__init__`` for a package), or None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the medseg modules it imports anywhere in its file (top level and inside functions)."""
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import submodule`` imports the submodule; ``from mod import name`` the module
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
                targets = subs + ([node.module] if len(subs) < len(node.names) else [])
            for t in targets:
                if t.startswith("medseg") and (hit := _resolve(t, known)) and hit != name:
                    out.add(hit)
        graph[name] = out
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50  # the graph is really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_inference_and_models_never_import_training():
    graph = import_graph()
    offenders = {m: sorted(t for t in deps if t.startswith("medseg.training"))
                 for m, deps in graph.items() if m.startswith(("medseg.inference", "medseg.models"))}
    assert not {m: d for m, d in offenders.items() if d}


def test_the_package_root_is_the_shared_ground():
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root == ROOT_MODULES and len(root) <= 6, sorted(root)


def function_sizes() -> list[tuple[str, str, int, int]]:
    """(module, function, parameter count, lines) of every function and method of the package."""
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x]
                n = len([p for p in params if p.arg not in ("self", "cls")])
                out.append((name, node.name, n, node.end_lineno - node.lineno + 1))
    return out


@pytest.mark.parametrize(("limit", "index", "what"), [(8, 2, "parameters"), (60, 3, "lines")])
def test_no_function_is_too_wide_or_too_long(limit, index, what):
    sizes = function_sizes()
    assert len(sizes) > 500
    over = [f"{m}.{f}: {row[index]} {what}" for row in sizes for m, f in [row[:2]] if row[index] > limit]
    assert not over, "\n".join(over)
