"""Shared fixtures of the pytest-benchmark suites.

Sizes come from ``LADLE_BENCH_MB`` (MB per checkpoint / per kernel input; default 8, so
``pytest benchmarks --benchmark-disable`` is a seconds-long smoke run). Generated
checkpoints go to ``LADLE_BENCH_DIR`` (reused across runs) or a pytest temp directory.

Example:
    LADLE_BENCH_MB=256 PYTHONPATH=python python -m pytest benchmarks --benchmark-only
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
try:
    import ladle  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(HERE.parent / "python"))

from llama_checkpoints import generate_checkpoints


def bench_bytes() -> int:
    """Bytes per checkpoint / kernel input, from ``LADLE_BENCH_MB`` (default 8)."""
    return int(float(os.environ.get("LADLE_BENCH_MB", "8")) * 1_000_000)


def gb_per_s(benchmark, n_bytes: int) -> float | None:
    """``n_bytes`` / median time in GB/s, or None when benchmarking is disabled."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return None
    return n_bytes / stats.stats.median / 1e9


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where checkpoints and outputs go."""
    configured = os.environ.get("LADLE_BENCH_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("ladle-bench")


@pytest.fixture(scope="session")
def llama_checkpoints(bench_dir: Path) -> Callable[[int], list[Path]]:
    """``get(n)`` -> n Llama-shaped sharded bf16 checkpoints of ``LADLE_BENCH_MB`` each."""

    def get(n: int) -> list[Path]:
        return generate_checkpoints(bench_dir / "inputs", n, bench_bytes())

    return get
