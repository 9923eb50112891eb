"""The typed boundary: python/ladle/_core.pyi (and _cuda.pyi) name exactly what
the compiled modules export, and py.typed marks the package as typed."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import ladle

PACKAGE = Path(ladle.__file__).parent


def stub_names(tree: ast.Module | ast.ClassDef) -> tuple[set[str], set[str]]:
    """(functions/classes/attributes, helper types) defined at one level of a stub.

    Helper types are what a stub may add for its own signatures: classes and
    type aliases with a leading underscore (``_HeaderDict``, ``_Input``); they
    need not exist in the compiled module.
    """
    exported: set[str] = set()
    helpers: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            exported.add(node.name)
        elif isinstance(node, ast.ClassDef):
            (helpers if node.name.startswith("_") else exported).add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            alias = isinstance(node.annotation, ast.Name) and node.annotation.id == "TypeAlias"
            (helpers if alias else exported).add(node.target.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    helpers.add(target.id)
    return declared(exported), helpers


def declared(names: object) -> set[str]:
    """Names a binding declares: not dunders, not pybind11's own hooks
    (``_pybind11_conduit_v1_`` is added to every class, ``__entries`` to every enum)."""
    return {n for n in names
            if not (n.startswith("__") and n.endswith("__")) and not n.startswith("_pybind11")
            and n != "__entries"}


def public(obj: object) -> set[str]:
    return declared(dir(obj))


def class_members(cls: type) -> set[str]:
    """Members the binding defines on cls itself (not pybind11's own base)."""
    return declared(vars(cls))


def check_module_matches_stub(module: object, stub: Path) -> None:
    tree = ast.parse(stub.read_text(), filename=str(stub))
    exported, helpers = stub_names(tree)
    compiled = public(module)
    assert compiled - exported == set(), f"{stub.name} misses names the module exports"
    assert exported - compiled == set(), f"{stub.name} declares names the module lacks"
    assert not helpers & compiled, f"{stub.name} declares exported names as helper types"
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and \
                inspect.isclass(getattr(module, node.name)):
            members, _ = stub_names(node)
            bound = class_members(getattr(module, node.name))
            assert bound == members, f"{stub.name}: class {node.name} differs"


def test_core_stub_names_every_export_and_nothing_else() -> None:
    check_module_matches_stub(importlib.import_module("ladle._core"), PACKAGE / "_core.pyi")


def test_cuda_stub_names_every_export_and_nothing_else() -> None:
    from ladle.engine import cuda

    module = cuda._module()
    if module is None:
        pytest.skip("ladle._cuda was not built in this tree")
    check_module_matches_stub(module, PACKAGE / "_cuda.pyi")


def test_stub_checker_catches_a_missing_and_an_extra_name(tmp_path: Path) -> None:
    core = importlib.import_module("ladle._core")
    text = (PACKAGE / "_core.pyi").read_text()
    missing = tmp_path / "missing.pyi"
    missing.write_text(text.replace("def crc32c(", "def not_crc32c("))
    with pytest.raises(AssertionError, match="misses"):
        check_module_matches_stub(core, missing)
    extra = tmp_path / "extra.pyi"
    extra.write_text(text + "\ndef no_such_function() -> None: ...\n")
    with pytest.raises(AssertionError, match="lacks"):
        check_module_matches_stub(core, extra)


def test_package_is_marked_typed_and_stubs_ship_in_the_wheel() -> None:
    assert (PACKAGE / "py.typed").is_file()
    # scikit-build-core copies wheel.packages' directories whole, so the
    # stubs and marker ship as long as they sit in python/ladle.
    # (In CI, PACKAGE is the installed one, so this also checks what the wheel holds.)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'wheel.packages = ["python/ladle"]' in pyproject
    for stub in ("_core.pyi", "_cuda.pyi"):
        ast.parse((PACKAGE / stub).read_text())
