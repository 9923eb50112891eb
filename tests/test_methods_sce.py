"""SCE (``sce``) against a plain numpy reference of docs/methods.md (bit-exact,
including the tie rule at the variance threshold), its independence of threads and
chunking, the recipe path and the refused parameters."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from test_methods import seq_sum64

import ladle
from ladle.errors import LadleValueError
from ladle.methods import methods

from reference import from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32
SHAPES = [("model.embed.weight", [9, 700]), ("model.layers.0.mlp.weight", [5000]),
          ("model.layers.1.norm", [3]), ("model.layers.2.scale", [])]


def reference_sce(base, xs, select_topk, out_dtype):
    tvs = [(x - base).astype(F32) for x in xs]
    n_models = len(tvs)
    mean = np.zeros(base.size)
    for tv in tvs:
        mean = mean + tv.astype(np.float64)
    mean = mean / n_models
    var = np.zeros(base.size)
    for tv in tvs:
        var = var + (tv.astype(np.float64) - mean) ** 2
    with np.errstate(invalid="ignore"):
        v = (var / n_models).astype(F32)
    # Every NaN variance ranks as 0x7FC00000 whatever its payload (ties by index).
    bits = np.where(np.isnan(v), 0x7FC00000, v.view(np.uint32).astype(np.int64))
    if select_topk >= 1:
        keep = np.ones(base.size, dtype=bool)
    elif select_topk <= 0:
        keep = np.zeros(base.size, dtype=bool)
    else:
        k = int(F32(np.count_nonzero(bits)) * F32(select_topk))
        order = np.lexsort((np.arange(base.size), -bits))  # descending, ties by index
        rank = np.empty(base.size, dtype=np.int64)
        rank[order] = np.arange(base.size)
        keep = rank < k
    tvs = [np.where(keep, tv, F32(0)) for tv in tvs]
    means = [seq_sum64(tv.astype(np.float64) ** 2) / base.size for tv in tvs]
    total = 0.0
    for m in means:
        total += m
    weights = [F32(1 / n_models if abs(total) < 1e-6 else m / total) for m in means]
    elected = np.zeros_like(base)
    for tv in tvs:
        elected = (elected + tv).astype(F32)
    majority = np.where(elected >= 0, 1, -1)
    mixed, divisor = np.zeros_like(base), np.zeros_like(base)
    for tv, w in zip(tvs, weights):
        agree = np.sign(tv) == majority
        mixed = (mixed + np.where(agree, (tv * w).astype(F32), F32(0))).astype(F32)
        divisor = (divisor + np.where(agree, w, F32(0))).astype(F32)
    divisor = np.where(divisor < F32(1e-6), F32(1e-6), divisor)
    return from_f32((base + (mixed / divisor).astype(F32)).astype(F32), out_dtype)


def make_models(tmp_path, rng, n_models, dtype):
    """Deltas from a few values, so many variances tie at the selection threshold."""
    raws = [{} for _ in range(n_models + 1)]
    for name, shape in SHAPES:
        n = math.prod(shape)
        base = rng.standard_normal(n).astype(F32)
        for k in range(n_models + 1):
            step = rng.integers(-2, 3, n).astype(F32) * F32(0.125)
            x = base if k == 0 else (base + step).astype(F32)
            raws[k][name] = (dtype, shape, from_f32(x, dtype))
    return [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)], raws


def run_sce(tmp_path, paths, select_topk, out_name="out.safetensors", **options):
    out = tmp_path / out_name
    methods.merge_models("sce", paths[1:], out, base_model=paths[0],
                         parameters={"select_topk": select_topk}, progress=False, **options)
    return out


@pytest.mark.parametrize("select_topk", [0.3, [0.9, 0.05], 1.0, 0.0])
@pytest.mark.parametrize("dtype,out_dtype", [("BF16", "BF16"), ("F32", "F32")])
def test_sce_matches_reference(tmp_path, select_topk, dtype, out_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{select_topk}{dtype}".encode()))
    paths, raws = make_models(tmp_path, rng, 3, dtype)
    got = read_checkpoint(run_sce(tmp_path, paths, select_topk, dtype=out_dtype))
    positions = methods.layer_positions([n for n, _ in SHAPES])
    for name, _ in SHAPES:
        topk = methods.resolve_setting(select_topk, name, positions[name])
        base, *xs = [to_f32(r[name][2], dtype) for r in raws]
        assert got[name][2] == reference_sce(base, xs, topk, out_dtype), name


@pytest.mark.parametrize("n_models", [1, 3, 5])
def test_sce_independent_of_threads_chunks_and_kernels(tmp_path, n_models):
    # The vector variance (fp64 lanes) and erase-and-mix give the scalar kernels' bytes.
    paths, _ = make_models(tmp_path, np.random.default_rng(2), n_models, "BF16")
    info = ladle.build_info()
    kernels = [{"threads": 2, "kernel": k} for k in ("avx2", "avx512") if info[f"{k}_cpu"]]
    outputs = [run_sce(tmp_path, paths, 0.4, f"o{i}.safetensors", **opts).read_bytes()
               for i, opts in enumerate([{"threads": 1}, {"threads": 2, "chunk_elems": 1},
                                         {"threads": 2, "memory_budget": 1},
                                         {"threads": 2, "memory_budget": "1GiB"},
                                         {"threads": 1, "kernel": "scalar"}, *kernels])]
    assert all(o == outputs[0] for o in outputs[1:])


def test_sce_recipe_and_refusals(tmp_path):
    from ladle.methods.recipe import load_recipe, run_recipe

    paths, _ = make_models(tmp_path, np.random.default_rng(4), 2, "BF16")
    api = run_sce(tmp_path, paths, 0.5, "api.safetensors")
    models = "\n".join(f"  - model: {p}" for p in paths[1:])
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"merge_method: sce\nbase_model: {paths[0]}\nmodels:\n{models}\n"
                      f"parameters: {{select_topk: 0.5}}\n")
    out = tmp_path / "recipe.safetensors"
    run_recipe(load_recipe(recipe), out, progress=False)
    assert read_checkpoint(out) == read_checkpoint(api)
    with pytest.raises(LadleValueError, match="'select_topk' must be a number"):
        run_sce(tmp_path, paths, "half", "bad.safetensors")
    with pytest.raises(LadleValueError, match="unknown parameter 'density' for sce"):
        methods.merge_models("sce", paths[1:], tmp_path / "bad.safetensors",
                             base_model=paths[0], parameters={"density": 0.5})
    assert not (tmp_path / "bad.safetensors").exists()


def nan_variance_models(tmp_path, n=5000):
    """Base + 2 BF16 models where most variances are NaN, from NaNs of many payloads and
    both signs, the other deltas of either sign; returns the paths and raw tensors."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal(n).astype(F32)
    raws = [from_f32(base, "BF16")]
    for _ in range(2):
        step = rng.choice(np.array([-0.25, 0.125], dtype=F32), size=n)  # some agree with -1
        x = np.frombuffer(from_f32(base + step, "BF16"), np.uint16).copy()
        where = rng.choice(n, size=3000, replace=False)
        x[where] = rng.integers(0x7F81, 0x7FFF, size=where.size, dtype=np.uint16) | \
            (rng.integers(0, 2, size=where.size, dtype=np.uint16) << 15)
        raws.append(x.tobytes())
    paths = [write_raw(tmp_path / f"m{k}.safetensors", {"w": ("BF16", [n], r)})
             for k, r in enumerate(raws)]
    return paths, raws


def test_sce_nan_variances_tie_by_index(tmp_path):
    """K falls among the NaN variances and the lowest indices are kept whatever the
    payloads (a kept one mixes to NaN where the other model's delta is negative, a
    dropped one gives the base)."""
    paths, raws = nan_variance_models(tmp_path)
    got = read_checkpoint(run_sce(tmp_path, paths, 0.3))["w"][2]
    base, *xs = [to_f32(r, "BF16") for r in raws]
    with np.errstate(invalid="ignore"):
        assert got == reference_sce(base, xs, 0.3, "BF16")
