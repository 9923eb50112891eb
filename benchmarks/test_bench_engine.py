"""End-to-end merges of Llama-shaped sharded bf16 checkpoints on disk (warm page cache):
``ladle.interpolate`` of two and ``ladle.soup`` of four, output fsynced as usual.

``extra_info["gb_per_s"]`` = (bytes read + written) / median time; checkpoint size from
``LADLE_BENCH_MB``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import gb_per_s

import ladle

ROUNDS = int(os.environ.get("LADLE_BENCH_ROUNDS", "3"))


def _remove(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".ladle-partial")):
        if p.exists():
            shutil.rmtree(p)


@pytest.mark.parametrize("n_inputs", [2, 4])
def test_merge_checkpoints(benchmark, llama_checkpoints, bench_dir: Path, n_inputs: int) -> None:
    """interpolate (2 inputs, alpha 0.5) or soup (4 inputs) into a sharded directory."""
    inputs = llama_checkpoints(n_inputs)
    out = bench_dir / f"out-{n_inputs}"
    reports: list[ladle.MergeReport] = []

    def merge() -> None:
        if n_inputs == 2:
            reports.append(ladle.interpolate(inputs[0], inputs[1], 0.5, out, progress=False))
        else:
            reports.append(ladle.soup(inputs, out, progress=False))

    def setup() -> None:
        _remove(out)

    benchmark.pedantic(merge, setup=setup, rounds=ROUNDS, warmup_rounds=1)

    report = reports[-1]
    n_bytes = report.bytes_read + report.bytes_written
    benchmark.extra_info.update(
        op="interpolate" if n_inputs == 2 else "soup", n_inputs=n_inputs,
        bytes_read=report.bytes_read, bytes_written=report.bytes_written,
        n_tensors=report.n_tensors, n_shards=report.n_shards, threads=report.threads,
        kernel=report.kernel, gb_per_s=gb_per_s(benchmark, n_bytes),
        engine_gb_per_s=report.gb_per_s)
    assert report.n_tensors == len(ladle.open(inputs[0]).tensors)
    assert ladle.open(out).n_bytes == ladle.open(inputs[0]).n_bytes
    _remove(out)
