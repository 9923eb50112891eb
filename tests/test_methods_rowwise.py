"""model_stock with ``filter_wise: true`` (per-row statistics) against a plain numpy
reference written here, bit-exact: the streamed per-row Gram sums, the ratio formula of
docs/methods.md and the weighted sum under the arithmetic contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from ladle import methods
from ladle.cli import main
from ladle.errors import LadleValueError

from reference import combine, from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32
TILE = 2048
# 2-D rows longer than a tile, a 3-D tensor (rows along the last dim), 1-D and 0-D.
SHAPES = {"model.layers.0.mlp.weight": [4, 2500], "model.layers.1.conv": [2, 3, 5],
          "model.norm.weight": [9], "model.scale": []}


def _tiled_sum64(x: np.ndarray) -> float:
    """fp64 sum, each 2048-element tile in index order, then the tiles in order."""
    parts = [np.cumsum(x[i:i + TILE], dtype=np.float64)[-1] for i in range(0, x.size, TILE)]
    return float(np.cumsum(np.array(parts, dtype=np.float64))[-1]) if parts else 0.0


def _ratio(deltas: list[np.ndarray]) -> float:
    """Model stock's t for one row: mean clamped cosine of the fp32 deltas."""
    n = len(deltas)
    g = [[_tiled_sum64(deltas[i].astype(np.float64) * deltas[j].astype(np.float64))
          for j in range(n)] for i in range(n)]
    cos = [min(1.0, max(-1.0, g[i][j] / max(math.sqrt(g[i][i]) * math.sqrt(g[j][j]), 1e-6)))
           for i in range(n) for j in range(i + 1, n)]
    c = sum(cos) / len(cos)
    denominator = 1 + (n - 1) * c
    return 0.0 if abs(denominator) < 1e-6 else n * c / denominator


def _reference(raws: list[dict], name: str, dtype: str, out_dtype: str) -> bytes:
    shape = SHAPES[name]
    xs = [to_f32(r[name][2], dtype) for r in raws]
    cols = shape[-1] if len(shape) >= 2 else xs[0].size
    out = b""
    for start in range(0, xs[0].size, cols):
        row = [x[start:start + cols] for x in xs]
        deltas = [(x - row[0]).astype(F32) for x in row[1:]]
        t = _ratio(deltas)
        n = len(deltas)
        out += combine([from_f32(x, "F32") for x in row], ["F32"] * len(row),
                       [1.0 - t] + [t / n] * n, out_dtype)
    return out


def _models(tmp_path, dtype: str, n_models: int = 3) -> tuple[list, list[dict]]:
    rng = np.random.default_rng(11)
    raws: list[dict] = [{} for _ in range(n_models + 1)]
    for name, shape in SHAPES.items():
        n = int(np.prod(shape)) if shape else 1
        base = rng.standard_normal(n).astype(F32)
        shared = rng.standard_normal(n).astype(F32)
        for k in range(n_models + 1):
            # Rows differ in how much the fine-tunes agree: per-row ratios differ.
            mix = np.repeat(np.linspace(0.0, 1.0, n // (shape[-1] if len(shape) >= 2 else n)),
                            shape[-1] if len(shape) >= 2 else n).astype(F32)
            noise = rng.standard_normal(n).astype(F32)
            x = base if k == 0 else base + F32(0.05) * (mix * shared + (1 - mix) * noise)
            raws[k][name] = (dtype, shape, from_f32(x.astype(F32), dtype))
    paths = [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]
    return paths, raws


@pytest.mark.parametrize("dtype,out_dtype", [("F32", "F32"), ("BF16", "BF16")])
def test_model_stock_filter_wise_matches_reference(tmp_path, dtype, out_dtype):
    paths, raws = _models(tmp_path, dtype)
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        out = tmp_path / f"fw{k}.safetensors"
        methods.model_stock(paths[0], paths[1:], out, parameters={"filter_wise": True},
                            dtype=out_dtype, threads=threads, chunk_elems=chunk,
                            progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1]  # independent of threads and chunking
    for name in SHAPES:
        assert outs[0][name][2] == _reference(raws, name, dtype, out_dtype), name
    # Per-row ratios differ from the per-tensor one on the 2-D tensor.
    whole = tmp_path / "whole.safetensors"
    methods.model_stock(paths[0], paths[1:], whole, progress=False)
    name = "model.layers.0.mlp.weight"
    assert read_checkpoint(whole)[name][2] != outs[0][name][2]
    assert read_checkpoint(whole)["model.scale"][2] == outs[0]["model.scale"][2]


def test_model_stock_filter_wise_recipe_and_errors(tmp_path):
    paths, raws = _models(tmp_path, "BF16", n_models=2)
    recipe = {"merge_method": "model_stock", "base_model": str(paths[0]),
              "models": [{"model": str(p)} for p in paths[1:]],
              "parameters": {"filter_wise": True}}
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "r.safetensors"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    for name in SHAPES:
        assert got[name][2] == _reference(raws, name, "BF16", "BF16"), name
    with pytest.raises(LadleValueError, match="filter_wise.*true or false"):
        methods.model_stock(paths[0], paths[1:], tmp_path / "bad.safetensors",
                            parameters={"filter_wise": 1}, progress=False)
