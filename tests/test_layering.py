"""The layering of pylon's packages (DESIGN.md, docs/architecture.md "Layering"), read from the source.

Every module under src/pylon is parsed with `ast`; every import statement that
can run counts, at module level or inside a function, but not those under
`if TYPE_CHECKING:` (they never run). Imports made by name at run time
(`config/registry.py` imports an extension's module the first time a config
names its @type) are the sanctioned way for a lower layer to reach a higher
one and are not edges: the lower layer knows a string, not the code.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pylon

SRC = Path(pylon.__file__).parent

#: Packages at the bottom: they must import nothing from the layers above them.
LOWER = ("config", "keys", "openssl", "regex", "stats")
HIGHER = frozenset({"proxy", "extensions", "pilot", "agent", "mesh", "bench", "cli"})

#: package -> {imported package: ["file:line imported.module", ...]}
Graph = dict[str, dict[str, list[str]]]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runnable(node: ast.AST) -> Iterator[ast.stmt]:
    """Every statement under `node` that may run: all but the body of `if TYPE_CHECKING:` (its else counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield statement
                yield from _runnable(statement)
        elif isinstance(child, ast.stmt):
            yield child
            yield from _runnable(child)
        else:
            yield from _runnable(child)


def imported_modules(source: str, module: str, is_package: bool, exists: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) for each module `source` imports; `from a import b` is `a.b` when that is a module in
    `exists`, else `a`. `module` is the importing module's name, to resolve relative imports."""
    for node in _runnable(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in exists else base


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str | None:
    """`pylon.proxy.tls` -> `proxy`, `pylon.cli` -> `cli`; None outside pylon and for pylon itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pylon" and len(parts) > 1 else None


@functools.cache
def package_graph() -> Graph:
    """Read once per test session (it parses every module); callers must not change it."""
    paths = sorted(SRC.rglob("*.py"))
    exists = {_module_name(path) for path in paths}
    graph: Graph = {}
    for path in paths:
        module = _module_name(path)
        source = _package(module)
        if source is None:
            continue
        for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py", exists):
            imported = _package(target)
            if imported is not None and imported != source:
                where = f"{path.relative_to(SRC.parent)}:{line} {target}"
                graph.setdefault(source, {}).setdefault(imported, []).append(where)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One path per cycle found by a depth-first search (each a list of packages, first == last)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        if package in path:
            found.append(path[path.index(package):] + [package])
            return
        if package in done:
            return
        for imported in sorted(graph.get(package, {})):
            visit(imported, path + [package])
        done.add(package)

    for package in sorted(graph):
        visit(package, [])
    return found


def test_imports_are_read_at_every_level_but_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import pylon.config.envoy\n"
        "from pylon.stats import store\n"
        "from pylon.stats.store import StatsStore\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from pylon.proxy.worker import Worker\n"
        "else:\n"
        "    from pylon.regex import get_engine\n"
        "def build() -> None:\n"
        "    from pylon.extensions.filters.http import fault\n"
    )
    exists = {"pylon.stats.store", "pylon.keys.sibling", "pylon.extensions.filters.http.fault"}
    found = [module for _, module in imported_modules(source, "pylon.keys.hook", False, exists)]
    assert found == [
        "typing", "pylon.config.envoy", "pylon.stats.store", "pylon.stats.store", "pylon.keys.sibling", "pylon.regex",
        "pylon.extensions.filters.http.fault",
    ]


def test_cycles_are_found() -> None:
    graph: Graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": []}, "b": {}}) == []


def test_the_graph_sees_the_tree() -> None:
    graph = package_graph()
    assert "config" in graph["proxy"]  # a module-level import
    assert "proxy" in graph["cli"]  # `pylon proxy` imports the proxy inside a function


def test_lower_layers_import_nothing_from_higher_ones() -> None:
    graph = package_graph()
    offending = {
        f"{lower} -> {higher}": graph[lower][higher]
        for lower in LOWER
        for higher in sorted(HIGHER & graph.get(lower, {}).keys())
    }
    assert offending == {}


def test_packages_import_each_other_without_cycles() -> None:
    graph = package_graph()
    found = cycles(graph)
    evidence = {
        " -> ".join(cycle): [graph[a][b][0] for a, b in zip(cycle, cycle[1:])] for cycle in found
    }
    assert evidence == {}
