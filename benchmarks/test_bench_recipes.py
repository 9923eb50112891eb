"""Recipes beyond per-element methods on Llama-shaped bf16 checkpoints (warm page cache):
a ``slices:`` depth upscale (all layers, then the second half again: 1.5× the layers)
and ``ladle.extract_lora`` (rank 16, exact SVD on the CPU, one weight at a time).

``extra_info["gb_per_s"]`` = (bytes read + written) / median time for the upscale;
``extra_info["weights_per_s"]`` for the extraction. Sizes from ``LADLE_BENCH_MB``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import gb_per_s

import ladle
from ladle.methods.recipe import load_recipe, run_recipe

ROUNDS = int(os.environ.get("LADLE_BENCH_ROUNDS", "3"))


def _remove(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".ladle-partial")):
        if p.exists():
            shutil.rmtree(p)


def test_slices_upscale(benchmark, llama_checkpoints, bench_dir: Path) -> None:
    """passthrough slices [0, n) + [n/2, n) of one checkpoint into a sharded directory."""
    (model,) = llama_checkpoints(1)
    n = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    recipe = bench_dir / "upscale.yml"
    recipe.write_text(yaml.safe_dump({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(model), "layer_range": [0, n]}]},
        {"sources": [{"model": str(model), "layer_range": [n // 2, n]}]}]}))
    out = bench_dir / "out-upscale"
    reports: list[ladle.MergeReport] = []

    benchmark.pedantic(lambda: reports.append(run_recipe(load_recipe(recipe), out,
                                                         progress=False)),
                       setup=lambda: _remove(out), rounds=ROUNDS, warmup_rounds=1)
    report = reports[-1]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == n + n - n // 2
    n_bytes = report.bytes_read + report.bytes_written
    benchmark.extra_info.update(op="slices-upscale", layers_in=n, layers_out=n + n - n // 2,
                                bytes_read=report.bytes_read,
                                bytes_written=report.bytes_written,
                                gb_per_s=gb_per_s(benchmark, n_bytes))


def test_extract_lora(benchmark, llama_checkpoints, bench_dir: Path) -> None:
    pytest.importorskip("torch")
    base, tuned = llama_checkpoints(2)
    out = bench_dir / "out-lora"
    reports: list[ladle.methods.lora.LoraReport] = []

    benchmark.pedantic(lambda: reports.append(ladle.extract_lora(base, tuned, out, rank=16,
                                                                 device="cpu",
                                                                 progress=False)),
                       setup=lambda: _remove(out), rounds=ROUNDS, warmup_rounds=1)
    report = reports[-1]
    assert (out / "adapter_model.safetensors").exists()
    stats = getattr(benchmark, "stats", None)
    benchmark.extra_info.update(op="extract-lora", rank=16, n_modules=report.n_modules,
                                weights_per_s=(report.n_modules / stats.stats.median
                                               if stats else None))
