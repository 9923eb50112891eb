"""DELLA (``della``, ``della_linear``) against a plain numpy reference of
docs/methods.md (bit-exact, with ladle's documented counter-based RNG), its
independence of threads and chunking, the recipe path and the refused parameters."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from test_methods import dare_u24, reference_mix

import ladle
from ladle.errors import LadleError, LadleValueError
from ladle.methods import methods

from reference import from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32
# Shapes chosen for the rank groups: rows of a matrix (one wider than a tile), a 1-D
# tensor ranked whole, a 3-D tensor ranked along its strided dimension 1, a scalar.
SHAPES = [("model.embed.weight", [37, 129]), ("model.layers.0.mlp.weight", [3, 2500]),
          ("model.layers.1.norm", [4100]), ("model.layers.2.conv", [4, 6, 5]),
          ("model.layers.3.scale", [])]


def unit_sum64(x: np.ndarray, unit: int) -> float:
    """fp64 sum in index order per unit, then the units in order (the L1 norms)."""
    parts = [np.cumsum(x[i:i + unit], dtype=np.float64)[-1] for i in range(0, x.size, unit)]
    return float(np.cumsum(np.array(parts, dtype=np.float64))[-1]) if parts else 0.0


def magprune(name, shape, delta, k, density, epsilon, seed, rescale):
    """Keep mask of one model's delta and its rescaled kept values."""
    n = delta.size
    group_len, stride = (n, 1) if len(shape) < 2 else (shape[1], math.prod(shape[2:]))
    bits = (delta.view(np.uint32) & np.uint32(0x7FFFFFFF)).reshape(-1, group_len, stride)
    order = np.argsort(bits, axis=1, kind="stable")  # ascending |delta|, ties by index
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(group_len).reshape(1, -1, 1), axis=1)
    rank = rank.reshape(-1)
    rank_norm = (rank.astype(F32) / F32(group_len - 1)) if group_len > 1 else \
        np.full(n, F32(0.5))
    p = (F32(density - epsilon) + (rank_norm * F32(2)).astype(F32) * F32(epsilon)).astype(F32)
    keep = dare_u24(seed, name, k, n).astype(F32) * F32(2.0**-24) < p
    kept = np.where(keep, (delta / p).astype(F32) if rescale == "density" else delta, F32(0))
    if rescale == "l1":
        block = group_len * stride
        unit = max(1, 2048 // block) * block
        before = unit_sum64(np.abs(delta.astype(np.float64)), unit)
        after = unit_sum64(np.abs(kept.astype(np.float64)), unit)
        if not (before < 1e-7 or after < 1e-7):
            kept = (kept * F32(before / after)).astype(F32)
    return kept.astype(F32)


def reference_della(method, name, shape, base, xs, weights, densities, epsilons, out_dtype,
                    *, seed, lam, rescale="l1", normalize=None):
    wds = []
    for k, (x, w, d, e) in enumerate(zip(xs, weights, densities, epsilons)):
        delta = (x - base).astype(F32)
        if d >= 1:
            kept = delta
        elif d <= 0:
            kept = np.zeros_like(delta)
        else:
            kept = magprune(name, shape, delta, k, d, e, seed, rescale)
        wds.append((F32(w) * kept).astype(F32))
    ties = method == "della"
    normalize = ties if normalize is None else normalize
    return reference_mix(base, wds, weights, "sum" if ties else "none", normalize, lam,
                         out_dtype)


def make_models(tmp_path, rng, n_models, dtype, shapes=SHAPES):
    raws = [{} for _ in range(n_models + 1)]
    for name, shape in shapes:
        n = math.prod(shape)
        base = rng.standard_normal(n).astype(F32)
        for k in range(n_models + 1):
            x = base if k == 0 else base + rng.standard_normal(n).astype(F32) * F32(0.01)
            raws[k][name] = (dtype, shape, from_f32(x, dtype))
    return [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)], raws


WEIGHTS = [0.7, -0.4, 1.3]
DENSITIES = [0.3, [0.8, 0.2], 0.55]  # a gradient across the layers for model 1
EPSILONS = [0.1, 0.15, 0.05]


def run_della(tmp_path, method, paths, out_name="out.safetensors", **options):
    params = [{"weight": w, "density": d, "epsilon": e}
              for w, d, e in zip(WEIGHTS, DENSITIES, EPSILONS)]
    out = tmp_path / out_name
    methods.merge_models(method, paths[1:], out, base_model=paths[0], model_parameters=params,
                         parameters={"lambda": 0.8}, seed=5, progress=False, **options)
    return out


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("dtype,out_dtype,rescale_mode", [("BF16", "BF16", "l1"),
                                                          ("F32", "F32", "l1"),
                                                          ("F16", "BF16", "density")])
def test_della_matches_reference(tmp_path, method, dtype, out_dtype, rescale_mode):
    rng = np.random.default_rng(zlib.crc32(f"{method}{dtype}".encode()))
    paths, raws = make_models(tmp_path, rng, 3, dtype)
    out = run_della(tmp_path, method, paths, dtype=out_dtype, rescale_mode=rescale_mode)
    got = read_checkpoint(out)
    positions = methods.layer_positions([n for n, _ in SHAPES])
    for name, shape in SHAPES:
        dens = [methods.resolve_setting(d, name, positions[name]) for d in DENSITIES]
        base, *xs = [to_f32(r[name][2], dtype) for r in raws]
        expected = reference_della(method, name, shape, base, xs, WEIGHTS, dens, EPSILONS,
                                   out_dtype, seed=5, lam=0.8, rescale=rescale_mode)
        assert got[name][2] == expected, f"{method} {name}"


def test_della_density_one_keeps_and_zero_drops(tmp_path):
    paths, raws = make_models(tmp_path, np.random.default_rng(8), 3, "F32")
    params = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, (1.0, 0.0, 0.5))]
    out = tmp_path / "out.safetensors"
    methods.merge_models("della", paths[1:], out, base_model=paths[0], model_parameters=params,
                         seed=9, progress=False)
    got = read_checkpoint(out)
    for name, shape in SHAPES:
        base, *xs = [to_f32(r[name][2], "F32") for r in raws]
        expected = reference_della("della", name, shape, base, xs, WEIGHTS, [1.0, 0.0, 0.5],
                                   [0.15] * 3, "F32", seed=9, lam=1.0)
        assert got[name][2] == expected, name


def test_della_keeps_density_and_favours_large_magnitudes(tmp_path):
    """The kept share is about `density`, and large deltas are kept more often."""
    n_rows, n_cols = 64, 512
    rng = np.random.default_rng(1)
    base = rng.standard_normal(n_rows * n_cols).astype(F32)
    delta = rng.standard_normal(n_rows * n_cols).astype(F32)
    raws = [{"w": ("F32", [n_rows, n_cols], from_f32(x, "F32"))} for x in (base, base + delta)]
    paths = [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]
    out = tmp_path / "out.safetensors"
    methods.merge_models("della_linear", paths[1:], out, base_model=paths[0],
                         model_parameters=[{"weight": 1.0, "density": 0.4, "epsilon": 0.3}],
                         parameters={"rescale": False}, progress=False)
    kept = to_f32(read_checkpoint(out)["w"][2], "F32") != base
    assert abs(kept.mean() - 0.4) < 0.02
    large = np.abs(delta) > np.median(np.abs(delta))
    assert kept[large].mean() > 0.5
    assert kept[~large].mean() < 0.3


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_independent_of_threads_chunks_and_kernels(tmp_path, method):
    # The vector draw against per-element probabilities (sparsify_prob) and the
    # replay of pass 1's keep masks (sparsify_kept) give the scalar kernels' bytes.
    paths, _ = make_models(tmp_path, np.random.default_rng(2), 3, "BF16")
    info = ladle.build_info()
    kernels = [{"threads": 2, "kernel": k}
               for k in ("avx2", "avx512") if info[f"{k}_cpu"]]
    outputs = [run_della(tmp_path, method, paths, f"o{i}.safetensors", **opts).read_bytes()
               for i, opts in enumerate([{"threads": 1}, {"threads": 2, "chunk_elems": 1},
                                         {"threads": 2, "memory_budget": "600KiB"},
                                         {"threads": 2, "memory_budget": "1GiB"},
                                         {"threads": 1, "kernel": "scalar"}, *kernels])]
    assert all(o == outputs[0] for o in outputs[1:])


def test_della_keep_masks_recomputed_when_over_budget(tmp_path):
    """Pass 1's keep masks are kept for pass 2 only while they fit a quarter of the
    budget (here 32 KiB < 115 KiB of masks); ranking again gives the same bytes."""
    paths, _ = make_models(tmp_path, np.random.default_rng(3), 3, "BF16",
                           [("model.layers.0.w", [600, 512])])
    small = run_della(tmp_path, "della", paths, "small.safetensors", memory_budget="128KiB")
    large = run_della(tmp_path, "della", paths, "large.safetensors", memory_budget="1GiB")
    assert small.read_bytes() == large.read_bytes()


def test_della_recipe(tmp_path):
    """`merge_method: della` from a YAML recipe gives the Python API's bytes."""
    from ladle.methods.recipe import load_recipe, run_recipe

    paths, _ = make_models(tmp_path, np.random.default_rng(4), 3, "BF16")
    api = run_della(tmp_path, "della", paths, "api.safetensors")
    models = "\n".join(
        f"  - model: {p}\n    parameters: {{weight: {w}, density: {d}, epsilon: {e}}}"
        for p, w, d, e in zip(paths[1:], WEIGHTS, DENSITIES, EPSILONS))
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"merge_method: della\nbase_model: {paths[0]}\nmodels:\n{models}\n"
                      f"parameters: {{lambda: 0.8}}\nseed: 5\n")
    out = tmp_path / "recipe.safetensors"
    run_recipe(load_recipe(recipe), out, progress=False)
    assert read_checkpoint(out) == read_checkpoint(api)


def test_della_refusals(tmp_path):
    paths, _ = make_models(tmp_path, np.random.default_rng(6), 1, "F32")
    out = tmp_path / "out.safetensors"

    def merge(params, **options):
        methods.merge_models("della", paths[1:], out, base_model=paths[0],
                             model_parameters=[params], progress=False, **options)

    with pytest.raises(LadleValueError, match=r"epsilon 0.3 with density 0.2 of model 0 .*"
                                              r"density - epsilon > 0"):
        merge({"weight": 1, "density": 0.2, "epsilon": 0.3})
    with pytest.raises(LadleValueError, match=r"epsilon 0.15 with density 0.9 .*"
                                              r"density \+ epsilon < 1"):
        merge({"weight": 1, "density": 0.9})
    with pytest.raises(LadleValueError, match=r"density 1.5 of model 0 .* outside \[0, 1\]"):
        merge({"weight": 1, "density": 1.5})
    with pytest.raises(LadleValueError, match="'epsilon' must be a number"):
        merge({"weight": 1, "density": 0.5, "epsilon": "x"})
    with pytest.raises(LadleValueError, match="unknown parameter 'gamma'"):
        merge({"weight": 1, "gamma": 0.1})
    with pytest.raises(LadleError, match=r"model.layers.0.mlp.weight.*rank block of 2500 "
                                         r"elements.*raise --memory-budget"):
        merge({"weight": 1, "density": 0.5}, memory_budget="64KiB")
    assert not out.exists()
