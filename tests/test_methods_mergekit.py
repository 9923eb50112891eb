"""mergekit methods added to the engine, bit-exact against plain numpy references
written here (docs/methods.md's order of operations): model_stock with
``filter_wise: true`` (per-row Gram sums, the ratio formula, the weighted sum under
the arithmetic contract), nuslerp (per tensor and per row, with and without a base)
and nearswap (per element)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from ladle import _core
from ladle.cli.cli import main
from ladle.errors import LadleValueError
from ladle.methods import methods

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
def test_model_stock_filter_wise_matches_reference(tmp_path, monkeypatch, dtype, out_dtype):
    paths, raws = _models(tmp_path, dtype)
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        if k:  # rows split over several Gram/sum runs
            monkeypatch.setattr(methods, "_ROW_BATCH", 3)
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


def test_filter_wise_row_batches_fit_the_budget(tmp_path, monkeypatch):
    # Rows shorter than a page stay mapped until their batch is released, so a batch's
    # input bytes are bounded by half the budget (else 16384 rows of every input were
    # resident at once: 338 MiB under a 64 MiB budget on the 0.5 GB bench); the bytes
    # do not depend on where the batches are cut.
    paths, _ = _models(tmp_path, "BF16")
    budget = 40 << 10
    seen = []

    def spy(tensors, max_bytes, real=methods._row_batches):
        for batch in real(tensors, max_bytes):
            seen.append((max_bytes, len(batch), sum(
                length * sum(_core.dtype_n_bits(i.dtype) // 8 for i, _ in t.inputs)
                for t, _, length in batch)))
            yield batch

    monkeypatch.setattr(methods, "_row_batches", spy)
    small, large = tmp_path / "small.safetensors", tmp_path / "large.safetensors"
    methods.model_stock(paths[0], paths[1:], small, parameters={"filter_wise": True},
                        memory_budget=budget, progress=False)
    n_small = len(seen)
    methods.model_stock(paths[0], paths[1:], large, parameters={"filter_wise": True},
                        progress=False)
    assert small.read_bytes() == large.read_bytes()
    assert n_small > len(seen) - n_small  # the small budget cut more batches
    for max_bytes, rows, n_bytes in seen[:n_small]:
        assert max_bytes == budget // 2 and (rows == 1 or n_bytes <= max_bytes)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_model_stock_ratios_vectorised_bit_for_bit(n):
    # filter_wise rows take their ratios from one vectorised call: the same bits as
    # model_stock_t row by row, zero rows, NaN/inf sums and near-zero norms included.
    rng = np.random.default_rng(n)
    grams = []
    for row in range(400):
        v = rng.standard_normal((n, 7)) * 10.0 ** rng.integers(-8, 4)
        g = (v @ v.T).ravel().tolist()
        if row % 7 == 0:
            g[int(rng.integers(n * n))] = [math.nan, math.inf, 0.0, -0.0, 1e-300][row % 5]
        grams.append([0.0] * (n * n) if row % 11 == 0 else g)
    got = methods.model_stock_ratios(grams, n)
    want = [methods.model_stock_t(g, n) for g in grams]
    assert np.array(got).tobytes() == np.array(want).tobytes()


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


# ---------------------------------------------------------------------------
# nearswap

def _nearswap_reference(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """docs/methods.md's nearswap, fp32 per operation."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.abs(a - b)
        den = np.where(diff < F32(1e-6), F32(1e-6), diff)  # NaN compares false: stays NaN
        w = (F32(1) / den) * F32(t)
        w = np.where(w < 0, F32(0), np.where(w > 1, F32(1), w))
        return (w * b + (F32(1) - w) * a).astype(F32)


def _nearswap_pair(tmp_path, dtype: str) -> tuple[list, dict, dict]:
    rng = np.random.default_rng(5)
    names = {"model.layers.0.w": 5000, "model.layers.1.w": 700, "model.norm": 1}
    ra, rb = {}, {}
    for name, n in names.items():
        a = rng.standard_normal(n).astype(F32)
        # Differences from 1e-5 to 1: some below t, some above; some exactly equal.
        b = a + (rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 0, n)).astype(F32)
        if n > 10:
            b[:5] = a[:5]
            if dtype == "F32":
                a[5], b[6], a[7], b[8] = np.nan, np.nan, np.inf, -np.inf
        shape = [n] if n > 1 else []
        ra[name] = (dtype, shape, from_f32(a, dtype))
        rb[name] = (dtype, shape, from_f32(b, dtype))
    paths = [write_raw(tmp_path / "a.safetensors", ra), write_raw(tmp_path / "b.safetensors", rb)]
    return paths, ra, rb


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_nearswap_matches_reference(tmp_path, dtype):
    paths, ra, rb = _nearswap_pair(tmp_path, dtype)
    gradient = [0.001, 0.05]
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        out = tmp_path / f"ns{k}.safetensors"
        methods.nearswap(paths[0], paths[1], gradient, out, threads=threads, chunk_elems=chunk,
                         progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1]
    positions = methods.layer_positions(list(ra))
    for name in ra:
        a, b = to_f32(ra[name][2], dtype), to_f32(rb[name][2], dtype)
        t = methods.resolve_setting(gradient, name, positions[name])
        expected = _nearswap_reference(a, b, t)
        assert outs[0][name][2] == from_f32(expected, dtype), name
        if name == "model.layers.0.w":
            assert (expected == a).any() and (expected == b).any()
            assert ((expected != a) & (expected != b) & np.isfinite(expected)).any()


def test_nearswap_matches_mergekit_formula_in_fp32(tmp_path):
    torch = pytest.importorskip("torch")
    paths, ra, rb = _nearswap_pair(tmp_path, "F32")
    out = tmp_path / "ns.safetensors"
    methods.nearswap(paths[0], paths[1], 0.01, out, progress=False)
    got = read_checkpoint(out)
    for name in ra:
        a = torch.from_numpy(to_f32(ra[name][2], "F32").copy())
        b = torch.from_numpy(to_f32(rb[name][2], "F32").copy())
        # mergekit/merge_methods/nearswap.py, on fp32 tensors.
        weight = (0.01 / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
        expected = (weight * b + (1 - weight) * a).numpy()
        assert got[name][2] == from_f32(expected, "F32"), name


def test_nearswap_engine_job_checks_its_inputs():
    v = np.zeros(16, dtype=F32)
    out = np.zeros(16, dtype=F32)
    plan = _core.Plan()
    src = plan.add_memory_source("v", v.ctypes.data, v.nbytes)
    sink = plan.add_memory_sink("out", out.ctypes.data, out.nbytes)
    assert _core.supports(_core.JobKind.nearswap)
    plan.add_job("w", _core.JobKind.nearswap, 16, sink, 0, "F32", [_core.Input(src, 0, "F32")],
                 threshold=0.1)
    with pytest.raises(LadleValueError, match="nearswap needs 2 inputs and a finite t"):
        _core.run(plan)
    with pytest.raises(LadleValueError, match="add_jobs has no threshold"):
        plan.add_jobs([("w", "nearswap", 16, sink, 0, "F32",
                        [(src, 0, "F32", 1.0), (src, 0, "F32", 1.0)])])


def test_nearswap_recipe_and_errors(tmp_path):
    paths, ra, rb = _nearswap_pair(tmp_path, "BF16")
    recipe = {"merge_method": "nearswap", "base_model": str(paths[0]),
              "models": [{"model": str(paths[1])}], "parameters": {"t": 0.02}}
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "r.safetensors"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    for name in ra:
        expected = _nearswap_reference(to_f32(ra[name][2], "BF16"), to_f32(rb[name][2], "BF16"),
                                       0.02)
        assert got[name][2] == from_f32(expected, "BF16"), name
    with pytest.raises(LadleValueError, match="parameter 't' is required"):
        methods.merge_models("nearswap", [paths[1]], tmp_path / "x.safetensors",
                             base_model=paths[0], progress=False)
    with pytest.raises(LadleValueError, match="exactly 1"):
        methods.merge_models("nearswap", [paths[1], paths[1]],
                             tmp_path / "y.safetensors", base_model=paths[0],
                             parameters={"t": 0.1}, progress=False)


# ---------------------------------------------------------------------------
# nuslerp

def _nuslerp_coefficients(t: float, g: list[list[float]]) -> tuple[float, float]:
    """mergekit's nuslerp angle from fp64 sums; the lerp when sin θ < 1e-8."""
    n0, n1 = max(math.sqrt(g[0][0]), 1e-7), max(math.sqrt(g[1][1]), 1e-7)
    theta = math.acos(min(1.0, max(-1.0, g[0][1] / (n0 * n1))))
    if abs(math.sin(theta)) < 1e-8:
        return 1.0 - t, t
    return (math.sin((1 - t) * theta) / math.sin(theta),
            math.sin(t * theta) / math.sin(theta))


def _nuslerp_reference(xs: list[np.ndarray], shape: list[int], t: float, has_base: bool,
                       rows: bool, out_dtype: str) -> bytes:
    cols = shape[-1] if rows and len(shape) >= 2 else xs[0].size
    out = b""
    for start in range(0, xs[0].size, cols):
        row = [x[start:start + cols] for x in xs]
        vs = [(x - row[0]).astype(F32) for x in row[1:]] if has_base else row
        g = [[_tiled_sum64(a.astype(np.float64) * b.astype(np.float64)) for b in vs]
             for a in vs]
        c0, c1 = _nuslerp_coefficients(t, g)
        if has_base:  # base + (+0 + fp32(c0·δ0) + fp32(c1·δ1)), fp32 per operation
            m = (F32(0) + F32(c0) * vs[0]) + F32(c1) * vs[1]
            out += from_f32((row[0] + m).astype(F32), out_dtype)
        else:
            out += combine([from_f32(v, "F32") for v in vs], ["F32", "F32"], [c0, c1],
                           out_dtype)
    return out


@pytest.mark.parametrize("has_base,flatten", [(True, True), (True, False), (False, True),
                                              (False, False)])
def test_nuslerp_matches_reference(tmp_path, monkeypatch, has_base, flatten):
    paths, raws = _models(tmp_path, "BF16", n_models=2)
    weights = [0.3, 0.9]
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        if k:
            monkeypatch.setattr(methods, "_ROW_BATCH", 2)
        out = tmp_path / f"nu{k}.safetensors"
        methods.nuslerp(paths[1:], out, weights=weights, base=paths[0] if has_base else None,
                        flatten=flatten, threads=threads, chunk_elems=chunk, progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1]
    used = raws if has_base else raws[1:]
    for name, shape in SHAPES.items():
        xs = [to_f32(r[name][2], "BF16") for r in used]
        expected = _nuslerp_reference(xs, shape, 0.9 / 1.2, has_base, not flatten, "BF16")
        assert outs[0][name][2] == expected, name


def test_nuslerp_recipe_and_errors(tmp_path):
    paths, raws = _models(tmp_path, "BF16", n_models=2)
    recipe = {"merge_method": "nuslerp", "base_model": str(paths[0]),
              "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in paths[1:]],
              "parameters": {"nuslerp_flatten": False}}
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "r.safetensors"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    for name, shape in SHAPES.items():
        xs = [to_f32(r[name][2], "BF16") for r in raws]
        assert got[name][2] == _nuslerp_reference(xs, shape, 0.5, True, True, "BF16"), name
    with pytest.raises(LadleValueError, match="nuslerp_row_wise.*true or false"):
        methods.merge_models("nuslerp", paths[1:], tmp_path / "x.safetensors",
                             parameters={"nuslerp_row_wise": 1, "nuslerp_flatten": False},
                             model_parameters=[{"weight": 1.0}] * 2, progress=False)
    with pytest.raises(LadleValueError, match="exactly 2"):
        methods.merge_models("nuslerp", paths[1:2], tmp_path / "y.safetensors",
                             model_parameters=[{"weight": 1.0}], progress=False)


def test_release_source_checks_its_range():
    v = np.zeros(16, dtype=F32)
    plan = _core.Plan()
    src = plan.add_memory_source("v", v.ctypes.data, v.nbytes)
    plan.release_source(src, 0, 64)  # a memory source: nothing to release
    with pytest.raises(LadleValueError, match="release_source: source 7"):
        plan.release_source(7, 0, 1)
    with pytest.raises(LadleValueError, match="range out of bounds"):
        plan.release_source(src, 2**64 - 1, 2)
