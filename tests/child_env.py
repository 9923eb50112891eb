"""Environment for child processes (CLI runs, torchrun workers): the ladle that
this test run imported — installed in CI, the source tree in development — goes
first on PYTHONPATH, never a hard-coded repository path."""

from __future__ import annotations

import os
from pathlib import Path

import ladle


def child_env(**extra: str) -> dict[str, str]:
    package_parent = str(Path(ladle.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env
