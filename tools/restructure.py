"""Regroup python/ladle/'s flat modules into subpackages that show the architecture.

Run from the repository root (stdlib only):

    python tools/restructure.py            # move and rewrite
    python tools/restructure.py --check    # only say what would change; exit 1 if anything

The script is the change: it is written once and run on whatever main is when the
branches that edit the flat modules have landed, so no hand-made move has to be
merged against them. What it does:

1. refuses (exit 1, naming them) any ``python/ladle/*.py`` that ``MAPPING`` does not
   place, so a module added by another branch is never left behind silently;
2. rewrites every reference to a moved module in ``REWRITE_ROOTS``: relative and
   absolute imports (relative ones recomputed for the new depth), dotted names in
   code and strings (``mock.patch("ladle.merge.f")``, ``python -m ladle.cli``,
   ``ladle.soups.candidate_order``) and file paths in docs (``python/ladle/merge.py``);
3. ``git mv``s each module into its subpackage and writes the subpackages'
   ``__init__.py``.

A second run finds nothing to do. Three module names become package names as well
(``cli``, ``methods``, ``soups``: ``ladle/cli.py`` becomes ``ladle/cli/cli.py``), so
``ladle.cli.X`` is read as new (left alone) when X is a module of the new package and
as an attribute of the old module (rewritten to ``ladle.cli.cli.X``) otherwise; the
script checks that no such module defines a name that is also a sibling's name.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path("python/ladle")

# Where each top-level module of python/ladle goes: one place for every module. Rows
# for modules that do not exist (yet: other branches add them) are skipped.
MAPPING: dict[str, str] = {
    # formats/: reading checkpoints (headers only) and tensor sets of every input kind
    "checkpoint": "formats",
    "tensor_info": "formats",
    "hf_cache": "formats",
    "torch_bin": "formats",
    "torch_io": "formats",
    "sources": "formats",
    "keymap": "formats",
    "patterns": "formats",
    "dtype_rules": "formats",
    "synthetic": "formats",
    "_bulk": "formats",
    "set_checkpoint": "formats",
    # engine/: plans, the bridge to the C++ core, outputs, verification, ranks
    "plan": "engine",
    "preflight": "engine",
    "kinds": "engine",
    "cuda": "engine",
    "_units": "engine",
    "fp8_blocks": "engine",
    "output": "engine",
    "path_safety": "engine",
    "writer": "engine",
    "merge_report": "engine",
    "verify": "engine",
    "distributed": "engine",
    "live": "engine",
    "live_cuda": "engine",
    "load": "engine",
    "sum_plan": "engine",      # (issue14-perf)
    "row_stream": "engine",    # (issue18-geo)
    # methods/: what every output tensor is computed from
    "merge": "methods",
    "methods": "methods",
    "recipe": "methods",
    "mapping_keys": "methods",
    "slices": "methods",
    "tokenizer": "methods",
    "lora": "methods",
    "chat_templates": "methods",   # (issue18-geo)
    "fusion": "methods",           # (issue18-geo)
    "nuslerp_columns": "methods",  # (issue18-geo)
    "sphere": "methods",           # (issue18-geo)
    "method_engine": "methods",
    "lora_apply": "methods",
    # soups/: soups, WiSE-FT sweeps and ensembles of live models
    "soups": "soups",
    "learned": "soups",
    "accumulator": "soups",
    "ensembles": "soups",
    "wiseft": "soups",
    "results": "soups",
    "selection": "soups",
    # cli/: the `ladle` command
    "cli": "cli",
    "cli_soups": "cli",
    "cli_types": "cli",
    "demo": "cli",
    "_measure": "cli",
}

# Modules that stay at the top: the package's face and the leaves every layer shares.
KEEP = {"__init__", "__main__", "errors", "scores"}

PACKAGE_DOCS: dict[str, str] = {
    "formats": "Inputs: checkpoint files and directories read header-only, tensor sets of\n"
               "every input kind, key maps and patterns.\n",
    "engine": "Plans and their execution: the bridge to the C++ core, outputs written\n"
              "atomically, live modules, verification and torch.distributed ranks.\n",
    "methods": "Merge methods: linear merges, the mergekit-style methods, recipes, slices,\n"
               "tokenizers and LoRA extraction.\n",
    "soups": "Model soups, WiSE-FT sweeps and ensembles over live models.",
    "cli": "The ``ladle`` command line.",
}

# `ladle.methods` is public API (ladle/__init__.py imports it, __all__ names it): its
# package re-exports the public names of the module it replaces.
REEXPORT = {"methods"}

REWRITE_ROOTS = ["python", "tests", "benchmarks", "tools", "docs", "README.md",
                 "pyproject.toml", "CMakeLists.txt", "Makefile", ".ci"]
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml",
                 ".sh", ".cmake", ".json"}
SELF = Path("tools/restructure.py")


@dataclass(frozen=True)
class Layout:
    """The move, as the rewriters need it."""

    moved: dict[str, str]          # old module name -> new package name
    shadowed: set[str]             # moved modules whose name ladle/__init__ binds to an object
    submodules: dict[str, set[str]]  # new package -> its module names

    def new_module(self, name: str) -> str:
        return f"{self.moved[name]}.{name}"

    def is_new_path(self, package: str, attribute: str | None) -> bool:
        """``ladle.<package>.<attribute>`` already names the new layout."""
        return attribute is not None and attribute in self.submodules.get(package, set())


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def top_level_modules() -> set[str]:
    return {p.stem for p in PACKAGE_DIR.glob("*.py")}


def module_file(name: str) -> Path:
    old = PACKAGE_DIR / f"{name}.py"
    return old if old.exists() else PACKAGE_DIR / MAPPING[name] / f"{name}.py"


def defined_names(path: Path) -> set[str]:
    """Top-level names a module defines itself (not those it imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def bound_in_init() -> set[str]:
    """Names that ladle/__init__.py binds with ``from .x import name``, at its top
    level or (the lazily loaded exports) under ``if TYPE_CHECKING:``."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text())
    body = [n for top in tree.body for n in (top.body if isinstance(top, ast.If) else [top])]
    return {a.asname or a.name for n in body if isinstance(n, ast.ImportFrom) for a in n.names}


def build_layout() -> Layout:
    unplaced = sorted(top_level_modules() - set(MAPPING) - KEEP)
    if unplaced:
        sys.exit("restructure: python/ladle modules missing from MAPPING in "
                 f"tools/restructure.py: {', '.join(unplaced)}")
    moved = {m: p for m, p in MAPPING.items()
             if (PACKAGE_DIR / f"{m}.py").exists() or (PACKAGE_DIR / p / f"{m}.py").exists()}
    submodules: dict[str, set[str]] = {}
    for module, package in moved.items():
        submodules.setdefault(package, set()).add(module)
    for package in list(submodules):
        pkg_dir = PACKAGE_DIR / package
        if pkg_dir.is_dir():  # modules and subpackages that other changes put there
            submodules[package] |= {p.stem for p in pkg_dir.glob("*.py") if p.stem != "__init__"}
            submodules[package] |= {p.name for p in pkg_dir.iterdir()
                                    if (p / "__init__.py").exists()}
    # `ladle.cli.X` must say by X alone whether it is the new package or the old module.
    clashes = [f"{package}.{name}" for package in submodules if package in moved
               for name in defined_names(module_file(package)) & submodules[package]]
    if clashes:
        sys.exit(f"restructure: names clash with modules of their new package: {clashes}")
    shadowed = bound_in_init() & set(moved)
    return Layout(moved, shadowed, submodules)


# ---------------------------------------------------------------- Python imports


def current_package(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1])


def future_package(path: Path, layout: Layout) -> str:
    if path.parent == PACKAGE_DIR and path.stem in layout.moved:
        return f"ladle.{layout.moved[path.stem]}"
    return current_package(path)


def absolute_target(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def new_target(target: str, names: list[str], layout: Layout) -> str:
    """Where ``from <target> import <names>`` imports from in the new layout."""
    parts = target.split(".")
    if parts[0] != "ladle" or len(parts) < 2 or parts[1] not in layout.moved:
        return target
    name = parts[1]
    if layout.moved[name] == name:  # same-named package: new if it imports its modules
        attribute = parts[2] if len(parts) > 2 else None
        if attribute is None and all(n in layout.submodules[name] for n in names):
            return target
        if layout.is_new_path(name, attribute):
            return target
    return ".".join(["ladle", layout.new_module(name), *parts[2:]])


def from_root(name: str, layout: Layout, face: bool) -> str:
    """The package that ``from ladle import <name>`` must now import name from; in
    ladle/__init__.py (the face) a re-exporting package stays what it imports."""
    if name not in layout.moved or (name in REEXPORT and face):
        return "ladle"
    if name in layout.shadowed and name not in REEXPORT:
        return "ladle"  # the public object ladle/__init__.py binds to the name
    return f"ladle.{layout.moved[name]}"


def relative(target: str, package: str) -> str:
    here, there = package.split("."), target.split(".")
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(there[common:])


def render(node: ast.ImportFrom, target: str, package: str, names: str) -> str:
    module = relative(target, package) if node.level else target
    return f"from {module} import {names}"


def alias_text(aliases: list[ast.alias]) -> str:
    return ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in aliases)


def rewrite_import(node: ast.ImportFrom, segment: str, here: str, there: str,
                   layout: Layout, face: bool) -> str:
    """The statement ``from ... import ...`` (text segment, in package ``here``) once
    the layout is new and the file sits in package ``there``."""
    target = absolute_target(node, here)
    if target == "ladle":
        groups: dict[str, list[ast.alias]] = {}
        for alias in node.names:
            groups.setdefault(from_root(alias.name, layout, face), []).append(alias)
    else:
        groups = {new_target(target, [a.name for a in node.names], layout): list(node.names)}
    if list(groups) == [target] and (here == there or not node.level):
        return segment
    if len(groups) == 1:
        return render(node, next(iter(groups)), there, segment.split(" import ", 1)[1])
    indent = "\n" + " " * node.col_offset
    return indent.join(render(node, new, there, alias_text(aliases))
                       for new, aliases in groups.items())


def rewrite_python_imports(source: str, path: Path, layout: Layout) -> str:
    """Every ``from ... import`` of the package's modules: relative ones inside
    python/ladle (recomputed for the file's new depth), absolute ones anywhere."""
    inside = is_package_file(path)
    here = current_package(path) if inside else "ladle"
    there = future_package(path, layout) if inside else "ladle"
    data = source.encode()
    offsets = [0]  # ast positions are UTF-8 byte offsets within lines split at "\n"
    for line in data.split(b"\n"):
        offsets.append(offsets[-1] + len(line) + 1)
    edits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if not inside and (node.level or (node.module or "").split(".")[0] != "ladle"):
            continue
        old = ast.get_source_segment(source, node) or ""
        new = rewrite_import(node, old, here, there, layout,
                             face=path == PACKAGE_DIR / "__init__.py")
        if new != old:
            start = offsets[node.lineno - 1] + node.col_offset
            end = offsets[node.end_lineno - 1] + node.end_col_offset
            edits.append((start, end, new.encode()))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode()


# ---------------------------------------------------------------- dotted names and paths


def dotted_pattern(layout: Layout) -> re.Pattern[str]:
    names = "|".join(sorted(layout.moved, key=len, reverse=True))
    return re.compile(rf"(?<![\w.])(?:(?P<lead>from|import)\s+)?ladle\.(?P<name>{names})(?!\w)"
                      rf"(?:\.(?P<attr>\w+))?")


def imported_names(line: str) -> list[str]:
    """The names of `` import a, b as c`` (the rest of a from-import line)."""
    if not line.startswith(" import "):
        return []
    return [n.split(" as ")[0].strip() for n in
            line.removeprefix(" import ").split("#")[0].strip("() \\").split(",") if n.strip()]


def rewrite_dotted(text: str, layout: Layout, markdown: bool) -> str:
    """``ladle.X[.attr]`` in code, strings and prose; ``import``/``from`` lines in docs."""

    def replace(m: re.Match[str]) -> str:
        name, attr, lead = m["name"], m["attr"], m["lead"]
        same_named = layout.moved[name] == name
        if same_named and layout.is_new_path(name, attr):
            return m[0]
        if lead == "from" and attr is None:  # `from ladle.X import names`: X is a module
            names = imported_names(text[m.end():].split("\n", 1)[0])
            if same_named and names and all(n in layout.submodules[name] for n in names):
                return m[0]
            if markdown and name in REEXPORT and names and set(names) <= public_names(name):
                return m[0]
        elif lead == "import":
            pass  # `import ladle.X` imports the module X
        elif attr is None and (name in layout.shadowed or name in REEXPORT):
            return m[0]  # `ladle.merge` is the public function, `ladle.methods` the package
        elif markdown and name in REEXPORT and attr in public_names(name):
            return m[0]  # docs keep the public path `ladle.methods.merge_models`
        prefix = m[0][: m.start("name") - m.start()]
        tail = f".{attr}" if attr is not None else ""
        return f"{prefix}{layout.new_module(name)}{tail}"

    return dotted_pattern(layout).sub(replace, text)


def rewrite_paths(text: str, layout: Layout) -> str:
    """``ladle/merge.py`` (file paths, doc links) -> ``ladle/methods/merge.py``."""
    names = "|".join(sorted(layout.moved, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])ladle/(?P<name>{names})\.py\b")
    return pattern.sub(lambda m: f"ladle/{layout.moved[m['name']]}/{m['name']}.py", text)


def rewrite_text(path: Path, layout: Layout) -> str:
    text = path.read_text()
    if path.suffix == ".py":
        text = rewrite_python_imports(text, path, layout)
    text = rewrite_dotted(text, layout, markdown=path.suffix == ".md")
    return rewrite_paths(text, layout)


def is_package_file(path: Path) -> bool:
    return path.is_relative_to(PACKAGE_DIR)


_PUBLIC: dict[str, set[str]] = {}


def public_names(package: str) -> set[str]:
    """The public names the module ``package`` (which becomes a package) defines."""
    if package not in _PUBLIC:
        _PUBLIC[package] = {n for n in defined_names(module_file(package))
                            if not n.startswith("_")}
    return _PUBLIC[package]


# ---------------------------------------------------------------- files and moves


def files_to_rewrite() -> list[Path]:
    tracked = git("ls-files", "--", *REWRITE_ROOTS).splitlines()
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *REWRITE_ROOTS)
    paths = sorted({Path(p) for p in tracked + untracked.splitlines()})
    return [p for p in paths if p.exists() and p != SELF and (
        p.suffix in TEXT_SUFFIXES or p.name in {"Makefile", "CMakeLists.txt"}
        or p.parent == Path(".ci"))]


def package_init(package: str) -> str:
    text = f'"""{PACKAGE_DOCS[package]}"""\n'
    if package in REEXPORT:
        names = sorted(public_names(package))
        text += ("\nfrom __future__ import annotations\n\n"
                 f"from .{package} import (  # noqa: F401  (`ladle.{package}` is public API)\n")
        text += "".join(f"    {n},\n" for n in names) + ")\n"
    return text


def plan_moves(layout: Layout) -> list[tuple[Path, Path]]:
    moves = []
    for module, package in sorted(layout.moved.items()):
        old, new = PACKAGE_DIR / f"{module}.py", PACKAGE_DIR / package / f"{module}.py"
        if old.exists() and new.exists():
            sys.exit(f"restructure: both {old} and {new} exist; merge them by hand first")
        if old.exists():
            moves.append((old, new))
    return moves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a run would change something")
    args = parser.parse_args(argv)
    if not PACKAGE_DIR.is_dir():
        sys.exit("restructure: run from the repository root (python/ladle not found)")
    layout = build_layout()
    rewrites = {p: t for p in files_to_rewrite() if (t := rewrite_text(p, layout)) != p.read_text()}
    moves = plan_moves(layout)
    inits = [(PACKAGE_DIR / p / "__init__.py", p) for p in sorted(set(layout.moved.values()))
             if not (PACKAGE_DIR / p / "__init__.py").exists()]
    for path in rewrites:
        print(f"rewrite {path}")
    for old, new in moves:
        print(f"move    {old} -> {new}")
    for path, _ in inits:
        print(f"create  {path}")
    for module in sorted(layout.moved):
        if re.search(r"(?<![\w.])__file__", module_file(module).read_text()):
            print(f"note    {module_file(module)} uses __file__: check paths it builds",
                  file=sys.stderr)
    if args.check:
        return 1 if rewrites or moves or inits else 0
    for path, text in rewrites.items():
        path.write_text(text)
    for path, package in inits:
        path.parent.mkdir(exist_ok=True)
        path.write_text(package_init(package))
        git("add", str(path))
    for old, new in moves:
        git("mv", str(old), str(new))
    destinations = dict(moves)
    sort_imports([destinations.get(p, p) for p in rewrites if p.suffix == ".py"]
                 + [p for p, _ in inits])
    print(f"restructure: {len(rewrites)} files rewritten, {len(moves)} modules moved, "
          f"{len(inits)} packages created")
    return 0


def sort_imports(paths: list[Path]) -> None:
    """Renamed imports sort differently; the project's ruff (isort rules) re-sorts them."""
    if not paths:
        return
    command = [sys.executable, "-m", "ruff", "check", "--fix", "--select", "I", "--quiet"]
    if importlib.util.find_spec("ruff") is None:
        print("restructure: ruff is not installed here; sort the imports with\n  "
              + " ".join(command[2:] + ["python", "tests", "benchmarks", "tools"]))
        return
    subprocess.run(command + [str(p) for p in paths], check=False)


if __name__ == "__main__":
    sys.exit(main())
