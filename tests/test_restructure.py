"""tools/restructure.py, the script that regroups python/ladle into subpackages, run on
a copy of this repository: the result imports, runs, has no import cycles between
modules or subpackages, and a second run changes nothing; a module the mapping does
not place stops it before anything moves."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_import_cycles import find_cycles, import_graph, layer_graph

import ladle

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "restructure.py"
ROOTS = ["python", "tests", "benchmarks", "tools", "docs", "README.md", "pyproject.toml",
         "CMakeLists.txt", "Makefile", ".ci"]


# Imports what every absolute ladle import in tests/ and benchmarks/ names (clip/,
# which needs torch, and the optional compiled _cuda aside); prints how many
# statements it checked.
RESOLVE_IMPORTS = """
import ast, importlib, pathlib
count = 0
for path in sorted(pathlib.Path("tests").glob("*.py")) + sorted(pathlib.Path("benchmarks").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] != "ladle" or node.module.startswith("ladle.clip"):
                continue
            if node.module == "ladle._cuda" or any(a.name == "_cuda" for a in node.names):
                continue  # compiled only with nvcc (LADLE_CUDA); not a moved module
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(node.module + "." + alias.name)
            count += 1
print(count)
"""


def load_script():
    spec = importlib.util.spec_from_file_location("restructure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The tracked sources in a fresh git repository, plus the compiled core."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the repository's git checkout")
    copy = tmp_path / "repo"
    for name in git(REPO, "ls-files", "--", *ROOTS).splitlines():
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    for compiled in Path(ladle.__file__).parent.glob("_c*.so"):
        shutil.copy2(compiled, copy / "python" / "ladle" / compiled.name)
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-qm", "copy")
    return copy


def run_script(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "tools/restructure.py", *args], cwd=copy,
                          capture_output=True, text=True, check=False)


def test_restructured_package_imports_runs_and_a_second_run_changes_nothing(
        repo_copy: Path) -> None:
    script = load_script()
    package = repo_copy / "python" / "ladle"
    flat = {p.stem for p in package.glob("*.py")} - script.KEEP
    first = run_script(repo_copy)
    assert first.returncode == 0, first.stderr
    assert {p.stem for p in package.glob("*.py")} <= script.KEEP
    for module in flat:
        assert (package / script.MAPPING[module] / f"{module}.py").is_file(), module
    # The architecture doc already describes the new layout: the run leaves it alone.
    assert "docs/architecture.md" not in git(repo_copy, "status", "--porcelain")

    snapshot = git(repo_copy, "status", "--porcelain")
    again = run_script(repo_copy)
    assert again.returncode == 0 and "0 files rewritten, 0 modules moved" in again.stdout
    assert git(repo_copy, "status", "--porcelain") == snapshot

    graph = import_graph(package)
    assert find_cycles(graph) == [] and find_cycles(layer_graph(graph)) == []
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    probe = ("import ladle, ladle.methods; from ladle.engine import plan; "
             "assert callable(ladle.methods.methods.merge_models) and callable(ladle.merge); "
             # the demo's children import this package, not one a level too deep
             "import os, pathlib, ladle.cli.demo as demo; "
             "assert demo._child_env()['PYTHONPATH'].split(os.pathsep)[0] == "
             "str(pathlib.Path(ladle.__file__).resolve().parent.parent)")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    cli = subprocess.run([sys.executable, "-m", "ladle", "--help"], env=env,
                         capture_output=True, text=True, check=False)
    assert cli.returncode == 0 and "merge" in cli.stdout, cli.stderr
    # Every `from ladle... import` in the rewritten tests and benchmarks resolves.
    resolved = subprocess.run([sys.executable, "-c", RESOLVE_IMPORTS], cwd=repo_copy, env=env,
                              capture_output=True, text=True, check=False)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    assert int(resolved.stdout) > 50


def test_a_module_missing_from_the_mapping_stops_the_run(repo_copy: Path) -> None:
    (repo_copy / "python" / "ladle" / "brand_new_format.py").write_text('"""New."""\n')
    before = git(repo_copy, "status", "--porcelain")
    run = run_script(repo_copy)
    assert run.returncode == 1
    assert "brand_new_format" in run.stderr and "MAPPING" in run.stderr
    assert git(repo_copy, "status", "--porcelain") == before
