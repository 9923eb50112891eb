"""Where mergekit can run for the comparison tests: a Python that imports it,
named by LADLE_MERGEKIT_PYTHON (a separate environment) or this one. None when
neither can, and the comparisons skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def mergekit_python() -> str | None:
    for py in (os.environ.get("LADLE_MERGEKIT_PYTHON"), sys.executable):
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import mergekit.merge"], check=False,
                capture_output=True).returncode == 0:
            return py
    return None


def run_mergekit(python: str, config: Path, out: Path) -> subprocess.CompletedProcess:
    """``mergekit-yaml CONFIG OUT`` offline, with the tool beside ``python``."""
    tool = Path(python).parent / "mergekit-yaml"
    cmd = [str(tool)] if tool.exists() else [python, "-m", "mergekit.scripts.run_yaml"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd + [str(config), str(out), "--no-lazy-unpickle"], check=False,
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # older mergekit: no such flag
        proc = subprocess.run(cmd + [str(config), str(out)], check=False,
                              capture_output=True, text=True, env=env)
    return proc
