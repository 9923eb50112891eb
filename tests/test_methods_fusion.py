"""arcee_fusion (ladle.methods.fusion): bit-exact against a plain numpy reference written here
(docs/methods.md's order; quantiles from a full sort, not the streamed radix select),
independent of threads and block size, close to mergekit's torch code, from recipes,
with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from ladle.cli.cli import main
from ladle.engine import row_stream
from ladle.errors import LadleValueError
from ladle.methods import fusion, methods

from reference import from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32
SHAPES = {"model.layers.0.mlp.weight": [40, 70], "model.layers.1.conv": [3, 4, 25],
          "model.norm.weight": [300], "model.scale": []}


def _reference(x: np.ndarray, b: np.ndarray, shape: list[int]) -> np.ndarray:
    cols = shape[-1] if len(shape) >= 2 else x.size
    x2, b2 = x.reshape(-1, cols), b.reshape(-1, cols)

    def softmax(v):
        v = v.astype(np.float64)
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True) + 1e-8

    p, q = softmax(x2), softmax(b2)
    kl = (p * np.log(p / q)).sum(axis=1).astype(F32)
    d = (x2 - b2).astype(F32)
    s = (np.abs(d) * kl[:, None]).astype(F32)
    ordered = np.sort(s.ravel())
    n = ordered.size
    q1, med, q3 = (ordered[int(f * (n - 1))] for f in (0.25, 0.5, 0.75))
    threshold = F32(med + F32(F32(1.5) * F32(q3 - q1)))
    return (b2 + d * (s >= threshold).astype(F32)).astype(F32).ravel()


def _pair(tmp_path, dtype: str) -> tuple[list, dict, dict]:
    rng = np.random.default_rng(3)
    ra, rb = {}, {}
    for name, shape in SHAPES.items():
        n = int(np.prod(shape)) if shape else 1
        b = rng.standard_normal(n).astype(F32)
        # Rows that moved more (larger KL) and scattered large deltas: a real mask.
        scale = np.repeat(rng.uniform(0.01, 2.0, n // (shape[-1] if len(shape) >= 2 else n)),
                          shape[-1] if len(shape) >= 2 else n)
        x = (b + rng.standard_normal(n) * scale * rng.exponential(1.0, n)).astype(F32)
        ra[name] = (dtype, shape, from_f32(b, dtype))
        rb[name] = (dtype, shape, from_f32(x, dtype))
    paths = [write_raw(tmp_path / "base.safetensors", ra),
             write_raw(tmp_path / "ft.safetensors", rb)]
    return paths, ra, rb


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_arcee_fusion_matches_reference(tmp_path, monkeypatch, dtype):
    paths, ra, rb = _pair(tmp_path, dtype)
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048), (1, 0)]):
        if k == 1:  # blocks of three rows: many reads, histograms and writes
            monkeypatch.setattr(row_stream, "BLOCK_ROWS_MAX", 3)
        if k == 2:  # no room for the rows' KL: every pass computes it again
            monkeypatch.setattr(fusion, "RowKl",
                                lambda n_rows, limit, keeps=fusion.RowKl: keeps(n_rows, 0))
        out = tmp_path / f"af{k}.safetensors"
        methods.merge_models("arcee_fusion", [paths[1]], out, base_model=paths[0],
                             threads=threads, chunk_elems=chunk, progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1] == outs[2]
    for name, shape in SHAPES.items():
        b, x = to_f32(ra[name][2], dtype), to_f32(rb[name][2], dtype)
        expected = _reference(x, b, shape)
        assert outs[0][name][2] == from_f32(expected, dtype), name
        if name == "model.layers.0.mlp.weight":  # some of the delta kept, most not
            kept = expected != b
            assert 0 < kept.sum() < 0.5 * kept.size


def test_radix_select_equals_sort():
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.standard_normal(5000), [0.0, -0.0, np.inf, np.nan, 1e-40],
                             np.full(100, 0.5)]).astype(F32)
    keys = fusion.order_keys(values)

    def histograms(prefixes):
        if prefixes is None:
            return np.bincount(keys >> 16, minlength=1 << 16)
        return {p: np.bincount(keys[(keys >> 16) == p] & 0xFFFF, minlength=1 << 16)
                for p in prefixes}

    ranks = (0, 17, 2500, 5103, values.size - 1)
    got = fusion._from_keys(np.array(fusion._select(histograms, ranks), dtype=np.uint32))
    want = np.sort(values)[list(ranks)]  # NaN last, as torch.sort
    assert got.tobytes() == want.tobytes() or np.array_equal(got, want, equal_nan=True)


def test_arcee_fusion_close_to_mergekit(tmp_path):
    torch = pytest.importorskip("torch")
    paths, ra, rb = _pair(tmp_path, "F32")
    out = tmp_path / "af.safetensors"
    methods.arcee_fusion(paths[0], paths[1], out, progress=False)
    got = read_checkpoint(out)
    for name in ("model.layers.0.mlp.weight", "model.norm.weight"):
        shape = SHAPES[name]
        b = torch.from_numpy(to_f32(ra[name][2], "F32").reshape(shape))
        x = torch.from_numpy(to_f32(rb[name][2], "F32").reshape(shape))
        # mergekit/merge_methods/arcee_fusion.py in fp32 (fewer than 1e6 elements: no
        # sampling, so its quantiles are exact too).
        p = torch.softmax(x, dim=-1) + 1e-8
        q = torch.softmax(b, dim=-1) + 1e-8
        s = (x - b).abs() * torch.sum(p * torch.log(p / q), dim=-1).unsqueeze(-1)
        ordered, _ = torch.sort(s.view(-1))
        idx = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
        q1, med, q3 = ordered[idx]
        want = (b + (x - b) * (s >= med + 1.5 * (q3 - q1)).float()).view(-1).numpy()
        mine = to_f32(got[name][2], "F32")
        # fp64 softmaxes vs fp32: only elements at the threshold may fall differently.
        assert (mine != want).sum() <= 2, name


def test_arcee_fusion_recipe_and_errors(tmp_path):
    paths, ra, rb = _pair(tmp_path, "BF16")
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "arcee_fusion", "base_model": str(paths[0]),
                                   "models": [{"model": str(paths[1])}]}))
    out = tmp_path / "r.safetensors"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    for name, shape in SHAPES.items():
        expected = _reference(to_f32(rb[name][2], "BF16"), to_f32(ra[name][2], "BF16"), shape)
        assert got[name][2] == from_f32(expected, "BF16"), name
    bad = tmp_path / "bad.safetensors"
    with pytest.raises(LadleValueError, match="arcee_fusion needs a base model"):
        methods.merge_models("arcee_fusion", paths, bad, progress=False)
    with pytest.raises(LadleValueError, match="exactly 1 model"):
        methods.merge_models("arcee_fusion", [paths[1], paths[1]], bad, base_model=paths[0],
                             progress=False)
    with pytest.raises(LadleValueError, match="unknown parameter 't' for arcee_fusion"):
        methods.merge_models("arcee_fusion", [paths[1]], bad, base_model=paths[0],
                             parameters={"t": 0.5}, progress=False)
    wide = {"w": ("F32", [2, 400000], bytes(3_200_000))}
    wide_paths = [write_raw(tmp_path / f"w{k}.safetensors", wide) for k in range(2)]
    with pytest.raises(LadleValueError, match="tensor 'w': a row of 400000 elements"):
        methods.merge_models("arcee_fusion", [wide_paths[1]], bad, base_model=wide_paths[0],
                             memory_budget="16MiB", progress=False)
    assert not bad.exists() and not list(tmp_path.glob("*partial*"))
