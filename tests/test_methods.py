"""Merge methods against plain references written here, following docs/methods.md's
order of operations (bit-exact; SLERP and model stock within a stated tolerance),
chunk/thread independence, edge cases and recipe parsing."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import ladle
from ladle.errors import LadleValueError, MismatchError
from ladle.methods import methods

from reference import combine, from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32
TILE = 2048
NAMES_SIZES = [("model.embed.weight", 7), ("model.layers.0.attn.weight", 40_000),
               ("model.layers.1.mlp.weight", 2049), ("model.layers.2.norm", 1)]


# ---------------------------------------------------------------------------
# Reference implementation (full tensors in memory, numpy, fp32 per operation).

def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) % 2**64
    return h


def dare_u24(seed: int, name: str, model: int, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        s = _mix64(np.array([seed], dtype=np.uint64))
        s = _mix64(s ^ np.uint64(fnv1a(name)))
        s = _mix64(s ^ np.uint64(model + 1))
        idx = np.arange(1, n + 1, dtype=np.uint64)
        return (_mix64(s + idx * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(
            np.uint32)


def seq_sum64(x: np.ndarray) -> float:
    """fp64 sum tile by tile (2048), each tile and then the tiles in index order."""
    parts = [np.cumsum(x[i:i + TILE], dtype=np.float64)[-1] for i in range(0, x.size, TILE)]
    return float(np.cumsum(np.array(parts, dtype=np.float64))[-1]) if parts else 0.0


def rank_keep(delta: np.ndarray, lo: int, hi: int) -> np.ndarray:
    bits = (delta.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
    order = np.lexsort((np.arange(delta.size), -bits))  # |delta| descending, index ascending
    rank = np.empty(delta.size, dtype=np.int64)
    rank[order] = np.arange(delta.size)
    return (rank >= lo) & (rank < hi)


def ranks_for(sparsify: str, density: float, gamma: float, n: int) -> tuple[int, int]:
    if density >= 1:
        return 0, n
    if sparsify == "magnitude":
        return (0, 0) if density <= 0 or n == 0 else (0, max(1, int(density * n)))
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    return n - bottom - target, n - bottom


SPEC = {  # sparsify, consensus, normalize, rescale
    "task_arithmetic": ("none", "none", False, False),
    "ties": ("magnitude", "sum", True, False),
    "dare_ties": ("random", "sum", False, True),
    "dare_linear": ("random", "none", False, True),
    "breadcrumbs": ("outliers", "none", False, False),
    "breadcrumbs_ties": ("outliers", "sum", False, False),
}


def reference_task(method, name, base, xs, weights, densities, gammas, out_dtype, *,
                   seed=0, lam=1.0, rescale=None, rescale_mode="l1", consensus=None):
    sparsify, cons, normalize, resc = SPEC[method]
    cons = consensus or cons
    resc = resc if rescale is None else rescale
    b = base
    wds = []
    for k, (x, w, d, g) in enumerate(zip(xs, weights, densities, gammas)):
        delta = (x - b).astype(F32)
        n = delta.size
        if sparsify == "random" and d < 1:
            keep = dare_u24(seed, name, k, n).astype(F32) * F32(2.0**-24) < F32(d)
        elif sparsify in ("magnitude", "outliers"):
            keep = rank_keep(delta, *ranks_for(sparsify, d, g, n))
        else:
            keep = np.ones(n, dtype=bool)
        if resc and sparsify != "none" and rescale_mode == "density":
            kept = np.where(keep, delta / F32(d), F32(0))
        else:
            kept = np.where(keep, delta, F32(0)).astype(F32)
        if resc and sparsify != "none" and rescale_mode == "l1":
            before, after = seq_sum64(np.abs(delta.astype(np.float64))), \
                seq_sum64(np.abs(kept.astype(np.float64)))
            if not (before < 1e-7 or after < 1e-7):
                kept = (kept * F32(before / after)).astype(F32)
        wds.append((F32(w) * kept).astype(F32))
    return reference_mix(b, wds, weights, cons, normalize, lam, out_dtype)


def reference_mix(b, wds, weights, cons, normalize, lam, out_dtype):
    """Step 5-8 of the task program: mix the weighted deltas ``wds`` onto ``b``."""
    mixed = np.zeros_like(b)
    if cons == "none":
        divisor = F32(0)
        for w in weights:
            divisor = F32(divisor + F32(w))
        divisor = F32(1) if abs(divisor) < F32(1e-8) else divisor
        for wd in wds:
            mixed = (mixed + wd).astype(F32)
    else:
        if cons == "sum":
            total = np.zeros_like(b)
            for wd in wds:
                total = (total + wd).astype(F32)
            majority = np.where(total >= 0, 1, -1)
        else:
            majority = np.where(sum(np.sign(wd).astype(np.int64) for wd in wds) >= 0, 1, -1)
        divisor = np.zeros_like(b)
        for wd, w in zip(wds, weights):
            agree = np.sign(wd) == majority
            mixed = (mixed + np.where(agree, wd, F32(0))).astype(F32)
            divisor = (divisor + np.where(agree, F32(w), F32(0))).astype(F32)
        divisor[divisor == 0] = 1
    if normalize:
        mixed = (mixed / divisor).astype(F32)
    if lam != 1:
        mixed = (mixed * F32(lam)).astype(F32)
    return from_f32((b + mixed).astype(F32), out_dtype)


# ---------------------------------------------------------------------------
# Fixtures.

def make_models(tmp_path, rng, n_models, dtype="BF16", sizes=NAMES_SIZES, scale=0.01,
                quantize=None):
    """Base + n fine-tunes (base + small noise), as raw tensors and files."""
    raws = [{} for _ in range(n_models + 1)]
    for name, n in sizes:
        base = rng.standard_normal(n).astype(F32)
        for k in range(n_models + 1):
            x = base if k == 0 else base + rng.standard_normal(n).astype(F32) * F32(scale)
            if quantize:
                x = (np.round(x * quantize) / quantize).astype(F32)
            raws[k][name] = (dtype, [n] if n > 1 else [], from_f32(x, dtype))
    paths = [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]
    return paths, raws


def decoded(raws, name, dtype):
    return [to_f32(r[name][2], dtype) for r in raws]


# ---------------------------------------------------------------------------
# Bit-exact methods vs the reference.

@pytest.mark.parametrize("method", list(SPEC))
@pytest.mark.parametrize("dtype,out_dtype", [("BF16", "BF16"), ("F32", "F32"), ("F16", "BF16")])
def test_task_methods_match_reference(tmp_path, method, dtype, out_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{method}{dtype}".encode()))
    paths, raws = make_models(tmp_path, rng, 3, dtype)
    weights = [0.7, -0.4, 1.3]
    densities = [0.3, [0.9, 0.2], 0.55]  # a gradient across the layers for model 1
    lam = 0.8
    params = [{"weight": w, "density": d, **({"gamma": 0.05} if "bread" in method else {})}
              for w, d in zip(weights, densities)]
    out = tmp_path / "out.safetensors"
    methods.merge_models(method, paths[1:], out, base_model=paths[0], model_parameters=params,
                         parameters={"lambda": lam}, seed=7, dtype=out_dtype, progress=False,
                         memory_budget=1)
    got = read_checkpoint(out)
    positions = methods.layer_positions([n for n, _ in NAMES_SIZES])
    for name, _ in NAMES_SIZES:
        t = positions[name]
        dens = [methods.resolve_setting(d, name, t) for d in densities]
        base, *xs = decoded(raws, name, dtype)
        expected = reference_task(method, name, base, xs, weights, dens,
                                  [0.05 if "bread" in method else 0.0] * 3, out_dtype, seed=7,
                                  lam=lam)
        assert got[name][2] == expected, f"{method} {name}"


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
@pytest.mark.parametrize("quantize", [None, 64])
def test_windowed_rank_selection_matches_reference(tmp_path, method, quantize):
    """A tensor of more than 256 tiles: its thresholds come from the sampled windows
    (csrc/methods_cpu.cc), not the histograms; `quantize` makes many |delta| equal,
    so ties straddle the thresholds."""
    rng = np.random.default_rng(11)
    sizes = [("model.layers.0.big", 700_001)]
    paths, raws = make_models(tmp_path, rng, 3, "BF16", sizes=sizes, quantize=quantize)
    weights, densities, gamma = [0.7, -0.4, 1.3], [0.3, 0.8, 0.55], 0.05
    params = [{"weight": w, "density": d, **({"gamma": gamma} if "bread" in method else {})}
              for w, d in zip(weights, densities)]
    out = tmp_path / "out.safetensors"
    methods.merge_models(method, paths[1:], out, base_model=paths[0], model_parameters=params,
                         threads=2, progress=False)
    base, *xs = decoded(raws, sizes[0][0], "BF16")
    expected = reference_task(method, sizes[0][0], base, xs, weights, densities,
                              [gamma if "bread" in method else 0.0] * 3, "BF16")
    assert read_checkpoint(out)[sizes[0][0]][2] == expected


@pytest.mark.parametrize("budget,sampled,histogrammed", [
    ("256MiB", 18, 0),   # every window in one round
    # A 160 KiB candidate share: rounds of one or two windows of 75-112 KiB (one
    # round would take two of a tensor's six); the two of 0.5 MiB and 0.7 MiB (wide:
    # the bf16 deltas take few values) do not fit alone.
    ("640KiB", 12, 6),
    ("160KiB", 0, 18),   # a 40 KiB share holds no window: the histogram passes
])
def test_window_rounds_match_reference(tmp_path, budget, sampled, histogrammed):
    """Windows whose candidates do not fit the budget's share together are read in
    further rounds (csrc/methods_cpu.cc scan_windows), not left to the histograms;
    a window too big for the share alone still is."""
    rng = np.random.default_rng(12)
    sizes = [(f"model.layers.{i}.big", 600_001 + i) for i in range(3)]
    paths, raws = make_models(tmp_path, rng, 3, "BF16", sizes=sizes)
    weights, densities, gamma = [0.7, -0.4, 1.3], [0.3, 0.8, 0.55], 0.05
    params = [{"weight": w, "density": d, "gamma": gamma} for w, d in zip(weights, densities)]
    out = tmp_path / "out.safetensors"
    report = methods.merge_models("breadcrumbs_ties", paths[1:], out, base_model=paths[0],
                                  model_parameters=params, threads=2, memory_budget=budget,
                                  progress=False)
    assert (report.ranks_sampled, report.ranks_histogrammed) == (sampled, histogrammed)
    got = read_checkpoint(out)
    for name, _ in sizes:
        base, *xs = decoded(raws, name, "BF16")
        expected = reference_task("breadcrumbs_ties", name, base, xs, weights, densities,
                                  [gamma] * 3, "BF16")
        assert got[name][2] == expected, name


@pytest.mark.parametrize("kernel", ["scalar", "avx2"])
def test_ties_count_consensus_and_dare_density_rescale(tmp_path, kernel):
    if kernel == "avx2" and not ladle.build_info()["avx2_cpu"]:
        pytest.skip("CPU lacks AVX2/F16C")
    rng = np.random.default_rng(3)
    paths, raws = make_models(tmp_path, rng, 2, "BF16")
    params = [{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.6}]
    out = tmp_path / "dare.safetensors"
    methods.merge_models("dare_linear", paths[1:], out, base_model=paths[0],
                         model_parameters=params, seed=11, rescale_mode="density",
                         kernel=kernel, progress=False)
    got = read_checkpoint(out)
    for name, _ in NAMES_SIZES:
        base, *xs = decoded(raws, name, "BF16")
        expected = reference_task("dare_linear", name, base, xs, [1.0, 0.5], [0.4, 0.6],
                                  [0, 0], "BF16", seed=11, rescale_mode="density")
        assert got[name][2] == expected


def test_dare_rng_matches_documented_formula():
    key = ladle._core.tensor_key("model.layers.3.mlp.up_proj.weight")
    assert key == fnv1a("model.layers.3.mlp.up_proj.weight")
    ours = dare_u24(42, "model.layers.3.mlp.up_proj.weight", 2, 100)
    theirs = [ladle._core.dare_u24(42, key, 2, i) for i in range(100)]
    assert list(ours) == theirs


# ---------------------------------------------------------------------------
# Independence of chunk size and threads.

@pytest.mark.parametrize("method", ["dare_ties", "ties", "breadcrumbs"])
def test_independent_of_chunks_and_threads(tmp_path, method):
    rng = np.random.default_rng(5)
    # Coarse values: many equal magnitudes, so the thresholds fall inside big ties.
    paths, _ = make_models(tmp_path, rng, 2, "BF16", sizes=[("w", 70_001)], scale=0.05,
                           quantize=64)
    params = [{"weight": 1.0, "density": 0.37, **({"gamma": 0.1} if "bread" in method else {})},
              {"weight": 0.6, "density": 0.5}]
    outputs = []
    for i, (threads, chunk) in enumerate([(1, 0), (2, 2048), (3, 6144), (2, 16384), (1, 1)]):
        out = tmp_path / f"o{i}.safetensors"
        methods.merge_models(method, paths[1:], out, base_model=paths[0],
                             model_parameters=params, seed=3, threads=threads,
                             chunk_elems=chunk, progress=False)
        outputs.append(out.read_bytes())
    out = tmp_path / "budget.safetensors"
    methods.merge_models(method, paths[1:], out, base_model=paths[0], model_parameters=params,
                         seed=3, memory_budget="64KiB", progress=False)
    outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs)


# ---------------------------------------------------------------------------
# Edge cases.

@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "breadcrumbs"])
def test_density_zero_gives_base_and_one_keeps_all(tmp_path, method):
    rng = np.random.default_rng(9)
    paths, raws = make_models(tmp_path, rng, 2, "F32")
    for density in (0.0, 1.0):
        out = tmp_path / f"d{density}.safetensors"
        methods.merge_models(method, paths[1:], out, base_model=paths[0],
                             model_parameters=[{"weight": 1.0, "density": density}] * 2,
                             progress=False)
        got = read_checkpoint(out)
        for name, _ in NAMES_SIZES:
            base, *xs = decoded(raws, name, "F32")
            if density == 0.0:
                assert got[name][2] == raws[0][name][2]
            else:  # nothing dropped: the method without sparsification
                ref = reference_task(method, name, base, xs, [1.0, 1.0], [1.0, 1.0], [0, 0],
                                     "F32")
                assert got[name][2] == ref


@pytest.mark.parametrize("method", list(SPEC) + ["model_stock", "slerp"])
def test_all_zero_deltas_give_base(tmp_path, method):
    rng = np.random.default_rng(2)
    paths, raws = make_models(tmp_path, rng, 0, "BF16")
    copies = [paths[0]] + [write_raw(tmp_path / f"c{k}.safetensors", raws[0]) for k in range(3)]
    models = copies[1:2] if method == "slerp" else copies[1:]
    out = tmp_path / "out.safetensors"
    methods.merge_models(method, models, out, base_model=copies[0],
                         parameters={"t": 0.3} if method == "slerp" else None,
                         model_parameters=None if method in ("slerp", "model_stock")
                         else [{"weight": 0.5, "density": 0.5}] * len(models), progress=False)
    got = read_checkpoint(out)
    for name, _ in NAMES_SIZES:
        assert got[name][2] == raws[0][name][2], name


def test_ties_at_threshold_keep_lowest_indices(tmp_path):
    n = 10_000
    base = np.zeros(n, dtype=F32)
    delta = np.full(n, 0.5, dtype=F32)
    delta[::7] = 2.0     # 1429 clear winners
    delta[3::11] *= -1   # signs mixed in, magnitudes equal
    a = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [n], base.tobytes())})
    b = write_raw(tmp_path / "x.safetensors", {"w": ("F32", [n], (base + delta).tobytes())})
    for chunk in (2048, 4096, 0):
        out = tmp_path / f"o{chunk}.safetensors"
        methods.merge_models("ties", [b], out, base_model=a, chunk_elems=chunk, threads=2,
                             model_parameters=[{"weight": 1.0, "density": 0.3}],
                             progress=False)
        got = np.frombuffer(read_checkpoint(out)["w"][2], dtype=F32)
        k = int(0.3 * n)
        expected = np.zeros(n, dtype=F32)
        winners = np.flatnonzero(np.abs(delta) == 2.0)
        ties = np.flatnonzero(np.abs(delta) == 0.5)[:k - winners.size]
        expected[winners] = delta[winners]
        expected[ties] = delta[ties]
        assert np.count_nonzero(got) == k
        assert np.array_equal(got, expected)


def test_density_tiny_keeps_at_least_one(tmp_path):
    rng = np.random.default_rng(4)
    paths, raws = make_models(tmp_path, rng, 1, "F32", sizes=[("w", 1000)])
    out = tmp_path / "o.safetensors"
    methods.merge_models("ties", paths[1:], out, base_model=paths[0],
                         model_parameters=[{"weight": 1.0, "density": 1e-6}], progress=False)
    got = to_f32(read_checkpoint(out)["w"][2], "F32")
    base = to_f32(raws[0]["w"][2], "F32")
    assert np.count_nonzero(got != base) == 1


# ---------------------------------------------------------------------------
# SLERP and model stock (coefficients from fp64 statistics).

def test_slerp_matches_reference_within_tolerance(tmp_path):
    rng = np.random.default_rng(6)
    paths, raws = make_models(tmp_path, rng, 1, "F32", scale=0.5)
    out = tmp_path / "s.safetensors"
    methods.slerp(paths[0], paths[1], [0.2, 0.9], out, progress=False)
    got = read_checkpoint(out)
    positions = methods.layer_positions([n for n, _ in NAMES_SIZES])
    for name, n in NAMES_SIZES:
        v0, v1 = (x.astype(np.float64) for x in decoded(raws, name, "F32"))
        t = methods.resolve_setting([0.2, 0.9], name, positions[name])
        dot = np.dot(v0 / np.linalg.norm(v0), v1 / np.linalg.norm(v1))
        if abs(dot) > 0.9995:
            expected = (1 - t) * v0 + t * v1
        else:
            theta = np.arccos(np.clip(dot, -1, 1))
            expected = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)
        result = to_f32(got[name][2], "F32").astype(np.float64)
        # fp32 tolerance: coefficients rounded to fp32 plus two fp32 products and one sum.
        assert np.allclose(result, expected, rtol=2e-6, atol=2e-6 * np.abs(expected).max()), name


def test_slerp_colinear_falls_back_to_lerp_bit_exact(tmp_path):
    x = np.random.default_rng(1).standard_normal(5000).astype(F32)
    a = write_raw(tmp_path / "a.safetensors", {"w": ("BF16", [5000], from_f32(x, "BF16"))})
    y = from_f32(to_f32(from_f32(x, "BF16"), "BF16") * F32(2), "BF16")  # exactly 2x
    b = write_raw(tmp_path / "b.safetensors", {"w": ("BF16", [5000], y)})
    out = tmp_path / "o.safetensors"
    methods.slerp(a, b, 0.3, out, progress=False)
    t32 = F32(0.3)
    expected = combine([from_f32(x, "BF16"), y], ["BF16", "BF16"], [F32(1) - t32, t32], "BF16")
    assert read_checkpoint(out)["w"][2] == expected


def test_model_stock_matches_reference(tmp_path):
    rng = np.random.default_rng(8)
    paths, raws = make_models(tmp_path, rng, 3, "F32", scale=0.1)
    out = tmp_path / "ms.safetensors"
    methods.model_stock(paths[0], paths[1:], out, progress=False)
    got = read_checkpoint(out)
    for name, _ in NAMES_SIZES:
        base, *xs = (x.astype(np.float64) for x in decoded(raws, name, "F32"))
        ds = [x - base for x in xs]
        cos = [np.clip(np.dot(ds[i], ds[j]) / max(np.linalg.norm(ds[i]) *
                                                  np.linalg.norm(ds[j]), 1e-6), -1, 1)
               for i in range(3) for j in range(i + 1, 3)]
        c = np.mean(cos)
        t = 3 * c / (1 + 2 * c)
        expected = t * np.mean(xs, axis=0) + (1 - t) * base
        result = to_f32(got[name][2], "F32").astype(np.float64)
        assert np.allclose(result, expected, rtol=1e-5, atol=1e-6), name


# ---------------------------------------------------------------------------
# Layouts and errors.

def test_missing_lm_head_uses_tied_embedding(tmp_path):
    rng = np.random.default_rng(12)
    emb = rng.standard_normal(64).astype(F32)
    head = rng.standard_normal(64).astype(F32)
    base = write_raw(tmp_path / "b.safetensors", {
        "model.embed_tokens.weight": ("F32", [8, 8], emb.tobytes()),
        "lm_head.weight": ("F32", [8, 8], head.tobytes())})
    tied = write_raw(tmp_path / "t.safetensors", {
        "model.embed_tokens.weight": ("F32", [8, 8], (emb * F32(2)).tobytes())})
    out = tmp_path / "o.safetensors"
    methods.task_arithmetic(base, [tied], out, weights=[1.0], progress=False)
    got = read_checkpoint(out)
    delta = (emb * F32(2) - head).astype(F32)
    assert got["lm_head.weight"][2] == (head + delta).astype(F32).tobytes()


def test_method_argument_errors(tmp_path):
    rng = np.random.default_rng(1)
    paths, _ = make_models(tmp_path, rng, 2, "F32")
    out = tmp_path / "o.safetensors"
    with pytest.raises(LadleValueError, match="needs a base model"):
        methods.merge_models("ties", paths[1:], out, model_parameters=[{"weight": 1}] * 2)
    with pytest.raises(LadleValueError, match="unknown parameter 'densty'"):
        methods.merge_models("ties", paths[1:], out, base_model=paths[0],
                             model_parameters=[{"weight": 1, "densty": 0.5}] * 2)
    with pytest.raises(LadleValueError, match="'weight' of model 0 is required"):
        methods.merge_models("ties", paths[1:], out, base_model=paths[0])
    with pytest.raises(LadleValueError, match=r"density 1.5 .* outside \[0, 1\]"):
        methods.merge_models("ties", paths[1:], out, base_model=paths[0],
                             model_parameters=[{"weight": 1, "density": 1.5}] * 2)
    with pytest.raises(LadleValueError, match="not implemented by ladle"):
        methods.merge_models("ram", paths[1:], out, base_model=paths[0])
    with pytest.raises(LadleValueError, match="exactly 1 model"):
        methods.merge_models("slerp", paths[1:], out, base_model=paths[0],
                             parameters={"t": 0.5})
    other = write_raw(tmp_path / "x.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    with pytest.raises(MismatchError):
        methods.merge_models("ties", [other], out, base_model=paths[0],
                             model_parameters=[{"weight": 1}])


def test_resolve_setting_gradients_and_filters():
    r = methods.resolve_setting
    assert r(0.5, "x", 0.3) == 0.5
    assert r([0.0, 1.0, 0.0], "x", 0.25) == pytest.approx(0.5)
    assert r([0.0, 1.0], "x", 1.0) == 1.0
    conds = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.2},
             {"value": 0.9}]
    assert r(conds, "model.layers.1.self_attn.q_proj", 0.5) == 0.5
    assert r(conds, "model.layers.1.mlp.up", 0.5) == 0.2
    assert r(conds, "lm_head.weight", 0.0) == 0.9
    pos = methods.layer_positions(["emb", "model.layers.0.a", "model.layers.3.a", "norm"])
    assert pos == {"emb": 0.0, "model.layers.0.a": 0.0, "model.layers.3.a": 1.0, "norm": 0.0}


# ---------------------------------------------------------------------------
# Resume: an interrupted method run keeps its finished shards.

def test_interrupted_method_run_resumes_from_finished_shards(tmp_path, monkeypatch):
    from ladle.engine.output import OutputDir

    rng = np.random.default_rng(11)
    paths, _ = make_models(tmp_path, rng, 2)
    options = {"base_model": paths[0], "max_shard_size": 4000, "progress": False,
               "parameters": {"t": [0.0, 0.4, 1.0]}}
    fresh = tmp_path / "fresh"
    full = methods.merge_models("slerp", paths[1:2], fresh, **options)
    n_shards = len(list(fresh.glob("*.safetensors")))
    assert n_shards >= 3

    out = tmp_path / "out"
    record = OutputDir.record_shard

    def interrupt_after_first(self, name, crc32c=None):
        record(self, name, crc32c)
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputDir, "record_shard", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        methods.merge_models("slerp", paths[1:2], out, **options)
    monkeypatch.setattr(OutputDir, "record_shard", record)
    partial = tmp_path / "out.ladle-partial"
    kept = {p.name: p.stat().st_ino for p in partial.glob("*.safetensors")}
    assert len(kept) == 1

    # Another t is another merge: its resume is refused, the partial kept.
    with pytest.raises(LadleValueError, match="different merge"):
        methods.merge_models("slerp", paths[1:2], out, resume=True,
                             **{**options, "parameters": {"t": 0.9}})
    report = methods.merge_models("slerp", paths[1:2], out, resume=True, **options)
    assert {n: (out / n).stat().st_ino for n in kept} == kept  # reused, not rewritten
    assert 0 < report.bytes_read < full.bytes_read
    assert {p.name: p.read_bytes() for p in out.iterdir()} == \
        {p.name: p.read_bytes() for p in fresh.iterdir()}


def test_slerp_lerp_branch_rounds_like_fp32():
    """Colinear tensors take the lerp (1 - t, t) in fp32 (mergekit's torch arithmetic),
    computed without numpy: the same floats as numpy's float32 for any t, overflow
    to inf included."""
    rng = np.random.default_rng(4)
    ts = [0.1, 0.5, 1e-30, 2.0**-25, 1 - 2.0**-30, -0.3, 1.5, 1e10, 1e39, -1e39]
    for t in ts + list(rng.uniform(-3, 3, 2000)) + list(rng.standard_normal(200) * 1e30):
        with np.errstate(over="ignore"):
            t32 = np.float32(t)
            want = (float(np.float32(1) - t32), float(t32))
        assert methods.slerp_coefficients(float(t), [1.0, 1.0, 1.0, 1.0]) == want, t
