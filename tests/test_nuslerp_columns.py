"""nuslerp with ``nuslerp_row_wise: true, nuslerp_flatten: false`` (vectors along
dimension 0): bit-exact against a plain numpy reference written here (per-column
fp64 sums, rows added in index order; coefficients in fp64 rounded to fp32; the
fp32 sum or base + task order), independent of threads and block size, close to
mergekit's torch code, from recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from test_methods_mergekit import SHAPES, _models, _nuslerp_reference

from ladle.cli.cli import main
from ladle.engine import row_stream
from ladle.methods import methods

from reference import from_f32, to_f32
from st_io import read_checkpoint

F32 = np.float32


def _coefficients(t: float, g00: float, g01: float, g11: float) -> tuple[float, float]:
    n0, n1 = max(math.sqrt(g00), 1e-7), max(math.sqrt(g11), 1e-7)
    theta = math.acos(min(1.0, max(-1.0, g01 / (n0 * n1))))
    if abs(math.sin(theta)) < 1e-8:
        return 1.0 - t, t
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def _reference(xs: list[np.ndarray], shape: list[int], t: float, has_base: bool,
               out_dtype: str) -> bytes:
    if len(shape) < 2:  # one vector: the flattened nuslerp
        return _nuslerp_reference(xs, shape, t, has_base, False, out_dtype)
    rows = [x.reshape(shape[0], -1) for x in xs]
    vs = [(x - rows[0]).astype(F32) for x in rows[1:]] if has_base else rows
    out = np.empty_like(vs[0])
    for j in range(vs[0].shape[1]):
        g = [0.0, 0.0, 0.0]
        for r in range(vs[0].shape[0]):  # fp64 products, added row after row
            a, b = float(vs[0][r, j]), float(vs[1][r, j])
            g = [g[0] + a * a, g[1] + a * b, g[2] + b * b]
        c0, c1 = (F32(c) for c in _coefficients(t, *g))
        col = (c0 * vs[0][:, j]).astype(F32) + (c1 * vs[1][:, j]).astype(F32)
        if has_base:
            col = rows[0][:, j] + ((F32(0) + c0 * vs[0][:, j]) + c1 * vs[1][:, j])
        out[:, j] = col
    return from_f32(out.ravel(), out_dtype)


@pytest.mark.parametrize("has_base", [True, False])
def test_nuslerp_columns_match_reference(tmp_path, monkeypatch, has_base):
    paths, raws = _models(tmp_path, "BF16", n_models=2)
    weights = [0.3, 0.9]
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        if k:  # blocks of one row: the column sums cross blocks
            monkeypatch.setattr(row_stream, "BLOCK_ROWS_MAX", 1)
        out = tmp_path / f"col{k}.safetensors"
        methods.nuslerp(paths[1:], out, weights=weights, base=paths[0] if has_base else None,
                        flatten=False, row_wise=True, threads=threads, chunk_elems=chunk,
                        progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1]
    used = raws if has_base else raws[1:]
    rows = tmp_path / "rows.safetensors"  # per row (along the last dim): different
    methods.nuslerp(paths[1:], rows, weights=weights, base=paths[0] if has_base else None,
                    flatten=False, progress=False)
    for name, shape in SHAPES.items():
        xs = [to_f32(r[name][2], "BF16") for r in used]
        expected = _reference(xs, shape, 0.9 / 1.2, has_base, "BF16")
        assert outs[0][name][2] == expected, name
        if len(shape) >= 2:
            assert read_checkpoint(rows)[name][2] != expected, name


def test_nuslerp_columns_close_to_mergekit_and_from_recipe(tmp_path):
    torch = pytest.importorskip("torch")
    paths, raws = _models(tmp_path, "F32", n_models=2)
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump({
        "merge_method": "nuslerp", "base_model": str(paths[0]),
        "models": [{"model": str(p), "parameters": {"weight": w}}
                   for p, w in zip(paths[1:], [1.0, 3.0])],
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}}))
    out = tmp_path / "r.safetensors"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    for name, shape in SHAPES.items():
        xs = [to_f32(r[name][2], "F32") for r in raws]
        assert got[name][2] == _reference(xs, shape, 0.75, True, "F32"), name
        if len(shape) < 2:
            continue
        # mergekit/merge_methods/nuslerp.py, dim=0, flatten=False, in fp64.
        b, x0, x1 = (torch.from_numpy(x.astype(np.float64)).reshape(shape) for x in xs)
        v0, v1 = (x0 - b).transpose(0, -1), (x1 - b).transpose(0, -1)
        u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
        u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
        theta = torch.acos(torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1))
        res = (torch.sin(0.25 * theta) * v0 + torch.sin(0.75 * theta) * v1) / torch.sin(theta)
        want = (b + res.transpose(0, -1)).reshape(-1).numpy()
        np.testing.assert_allclose(to_f32(got[name][2], "F32"), want, rtol=1e-5, atol=1e-6)
