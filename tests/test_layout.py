"""The house rules the code's layout keeps: no import circles among trainyard's modules,
imports inside functions counted (only `if TYPE_CHECKING:` imports are exempt), and no
product file over 400 lines."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGES = {"platform": "trainyard", "agents": "trainyard.agents",
            "supervised": "trainyard.supervised"}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts
                     if p != "__init__"]
            found[".".join([package, *parts])] = ast.parse(path.read_text())
    return found


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    exempt = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
              and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from pkg import module` names the module itself
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_counting_imports_inside_functions():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(tree, known) - {name} for name, tree in modules.items()}
    assert _circles(graph) == []


def test_no_product_file_over_400_lines():
    """A file that outgrows 400 lines holds more than one role: split it by role (as the
    league, evaluation and play were split from the self-play module)."""
    long = {str(path.relative_to(REPO)): n for folder in PACKAGES
            for path in (REPO / folder).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
