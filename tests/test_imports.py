"""No import cycle among the modules of ``lm/``.

The graph is read from the source with ``ast``, not by importing: an edge ``a -> b``
means that running module ``a`` may run ``import b``. Imports inside functions count
(they run when the function is called, and an import moved into a function to dodge a
cycle leaves the two modules depending on each other all the same); imports under
``if TYPE_CHECKING:`` do not (they never run). Importing ``lm.x.y`` first runs the
package ``lm.x`` (its ``__init__.py``), so that is an edge too, except to a package the
importer itself lives in (Python has already started it).
"""

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT

LM = ROOT / "lm"


def lm_modules(package: Path = LM) -> dict[str, Path]:
    """Dotted module name -> source file for every ``.py`` under ``package``; a
    package's ``__init__.py`` is the package itself (``lm.hooks``)."""
    root = package.parent
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them, at any depth (functions,
    classes, try blocks), but the body of ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: Mapping[str, Path]) -> Iterator[str]:
    """The modules an import statement names: ``import a.b`` -> ``a.b``; ``from a import
    b`` -> ``a.b`` if that is a module, else ``a``; relative imports resolved."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        anchor = here[: len(here) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    for alias in node.names:
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def _with_parents(target: str, importer: str) -> Iterator[str]:
    """``target`` and the packages above it that importing it runs first, leaving out
    the importer's own packages (already running when the importer runs)."""
    parts = target.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if not (importer == name or importer.startswith(name + ".")):
            yield name


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the ``lm`` modules it may import when it runs (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, name, is_package, modules):
                edges |= {m for m in _with_parents(target, name) if m in modules}
        graph[name] = edges - {name}
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component of more than one
    node (Tarjan's algorithm), each starting from the component's first name in order.
    An empty list means the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, c) for c in sorted(components, key=min) if len(c) > 1]


def _cycle_in(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first node of ``component`` (breadth-first)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_find_cycles_finds_a_cycle_and_only_cycles():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert find_cycles(cyclic) == [["a", "b", "c", "a"], ["e", "f", "e"]]


def test_import_graph_resolves_each_import_form(tmp_path):
    pkg = tmp_path / "lm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("x = 1\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from lm.sub import leaf\n"  # a submodule: lm.sub.leaf (and lm.sub runs first)
        "if TYPE_CHECKING:\n    import lm.b\n"  # never runs: no edge
        "def f():\n    from lm import c\n"  # runs when f is called: an edge
    )
    (pkg / "b.py").write_text("import lm.sub.leaf\nfrom lm.a import f\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(lm_modules(pkg))
    assert graph == {
        "lm": set(), "lm.sub": {"lm.sub.leaf"}, "lm.sub.leaf": set(),
        "lm.a": {"lm.sub", "lm.sub.leaf", "lm.c"}, "lm.b": {"lm.sub", "lm.sub.leaf", "lm.a"},
        "lm.c": {"lm.a"},
    }
    assert find_cycles(graph) == [["lm.a", "lm.c", "lm.a"]]


def test_no_import_cycle_inside_lm():
    graph = import_graph(lm_modules())
    assert "lm.model" in graph and graph["lm.training.run"]  # the walk found the package
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail("import cycles in lm/:\n" + "\n".join(" -> ".join(c) for c in cycles))


# The package by role, lowest first: a module imports only from its own layer or lower
# ones (the README's layout table lists them in this order). lm.config and lm.training
# are one layer: the schema validates with training's pieces, and a run composes configs.
LAYERS = [
    {"lm.errors", "lm.atomic"},
    {"lm.hook_points", "lm.model"},
    {"lm.tokenizers", "lm.reference"},
    {"lm.data", "lm.adapters", "lm.hooks", "lm.sampling"},
    {"lm.checkpoint", "lm.metrics"},
    {"lm.interop"},
    {"lm.config", "lm.training"},
    {"lm.analysis"},
    {"lm.commands", "lm.bench"},
    {"lm.cli", "lm.train", "lm.__main__"},
]


def layer(module: str) -> int:
    """The index in ``LAYERS`` of ``module``'s top-level part of lm (``lm.training.run``
    -> ``lm.training``)."""
    top = ".".join(module.split(".")[:2])
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    modules = lm_modules()
    assert {".".join(m.split(".")[:2]) for m in modules} - {"lm"} == set().union(*LAYERS)
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph(modules).items() if a != "lm"
                    for b in targets if b != "lm" and layer(b) > layer(a))
    assert not upward, f"imports of a higher layer: {upward}"
