"""python/ladle's modules, and its subpackages, depend on each other one way: no
import cycles.

The graph is built statically from every ``from .x import``/``import ladle.x``
in a module, at module level and inside functions alike (a function-local
import that only dodges a cycle is still a cycle), so a cycle added later
fails here even when it happens to import fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ladle

PACKAGE = Path(ladle.__file__).parent

# Cycles that are accepted on purpose, as sets of module names; keep it empty.
ALLOWED_CYCLES: list[frozenset[str]] = []


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path, root: Path) -> str:
    name = module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(path: Path, root: Path, known: set[str]) -> set[str]:
    """The package's modules that the file at path imports, anywhere in it."""
    found: set[str] = set()
    package = package_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` / `from .pkg import sub` import the submodule;
            # any other name comes from the module (or package) itself.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    # Compiled modules (_core, _cuda) are leaves, known by their stubs.
    known = set(files) | {module_name(p, root) for p in root.rglob("*.pyi")}
    return {name: imported_modules(path, root, known) - {name} for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def layer(module: str) -> str:
    """The room a module lives in: its subpackage of ladle (a module at the top is a
    room of its own). The command-line modules of clip/ and analysis/ belong to the
    CLI, which dispatches to them and whose option types they share."""
    parts = module.split(".")
    if len(parts) > 2 and parts[-1] == "cli":
        return f"{parts[0]}.cli"  # (spelled so that tools/restructure.py leaves it)
    return ".".join(parts[:2])


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    layers: dict[str, set[str]] = {}
    for module, imported in graph.items():
        here = layer(module)
        layers.setdefault(here, set()).update(layer(m) for m in imported)
        layers[here].discard(here)
    return layers


def test_ladle_has_no_import_cycles() -> None:
    graph = import_graph()
    # Named by the module, wherever python/ladle's layout puts it.
    assert "merge" in {m.rpartition(".")[2] for m in graph} and "ladle.clip.cli" in graph
    cycles = [sorted(c) for c in find_cycles(graph) if c not in ALLOWED_CYCLES]
    assert cycles == [], f"import cycles in python/ladle: {cycles}"


def test_cycle_finder_sees_module_and_function_level_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "ladle"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from ladle.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def g():\n    from .. import a\n")
    (pkg / "d.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert find_cycles(graph) == [frozenset({"ladle.a", "ladle.b", "ladle.sub.c"})]


def test_subpackages_depend_on_each_other_one_way() -> None:
    layers = layer_graph(import_graph())
    assert "ladle.clip" in layers and "ladle.analysis" in layers
    cycles = [sorted(c) for c in find_cycles(layers)]
    assert cycles == [], f"import cycles between python/ladle's subpackages: {cycles}"


def test_layer_cycle_without_module_cycle_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "ladle"
    for sub in ("a", "b", "c"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from ..b.y import f\n")
    (pkg / "b" / "y.py").write_text("f = 1\n")
    (pkg / "b" / "z.py").write_text("def g():\n    from ..a import w\n")
    (pkg / "a" / "w.py").write_text("")
    (pkg / "a" / "cli.py").write_text("from ..c import v\n")  # a/cli.py is the CLI's
    (pkg / "c" / "v.py").write_text("from ..a import w\n")  # a.cli -> c -> a is no cycle
    graph = import_graph(pkg)
    assert find_cycles(graph) == []
    assert find_cycles(layer_graph(graph)) == [frozenset({"ladle.a", "ladle.b"})]
