"""Smoke run of benchmarks/bench_methods.py (every method, ladle vs the same-run I/O
ceiling) at a tiny size: ``pytest benchmarks --benchmark-disable`` keeps it runnable."""

from __future__ import annotations

import json
from pathlib import Path

import bench_methods


def test_bench_methods_reports_every_method(tmp_path: Path, capsys) -> None:
    out = tmp_path / "methods.json"
    assert bench_methods.main(["--size", "2MB", "--repeat", "1", "--workdir", str(tmp_path),
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["runs"]) == list(bench_methods.METHODS)
    for run in result["runs"].values():
        assert run["ladle_s"] > 0 and run["ceiling_s"] > 0 and run["output_bytes"] > 0
        assert run["peak_rss_mib"] > 0 and run["peak_rss_anon_mib"] > 0
    printed = capsys.readouterr().out
    assert "of ceil" in printed and "model_stock" in printed


def test_bench_methods_kernel_choice(tmp_path: Path) -> None:
    # --kernel reaches ladle's command line (a bad name would fail the ladle run).
    out = tmp_path / "methods.json"
    assert bench_methods.main(["--size", "2MB", "--repeat", "1", "--workdir", str(tmp_path),
                               "--methods", "dare_ties", "--kernel", "scalar",
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kernel"] == "scalar" and list(result["runs"]) == ["dare_ties"]
