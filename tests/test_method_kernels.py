"""The AVX2 and AVX-512 method kernels (csrc/method_kernels_avx2.cc, task_tile_avx2.cc,
method_kernels_avx512.cc) against the scalar reference
(csrc/method_kernels_cpu.cc), bit for bit, through every method: odd sizes (vector
tails, partial tiles and tile groups), NaN/Inf, subnormals, signed zeros and ties in
|delta| at the rank thresholds; and the pass count of magnitude selection."""

from __future__ import annotations

import numpy as np
import pytest

import ladle
from ladle.methods import methods

from st_io import write_raw

F32 = np.float32
SIZES = [("a", 1), ("b", 7), ("c", 2047), ("d", 2049), ("e", 8195), ("f", 12_345)]
SPECIALS = np.array([np.nan, np.inf, -np.inf, 1e-40, -1e-42, 0.0, -0.0, 1.5e-45], dtype=F32)

needs_avx2 = pytest.mark.skipif(not ladle.build_info()["avx2_cpu"], reason="CPU lacks AVX2/F16C")


def make_models(tmp_path, n_models: int, dtype: str, special: bool, seed: int = 1):
    """Base + n_models with coarse values (many equal |delta|) and optional specials."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n_models + 1):
        tensors = {}
        for name, n in SIZES:
            x = (np.round(rng.standard_normal(n) * 16) / 16).astype(F32)
            if special and k > 0:
                where = rng.choice(n, size=min(n, 6), replace=False)
                x[where] = rng.choice(SPECIALS, size=where.size)
            if dtype == "F32":
                raw = x.tobytes()
            else:  # BF16: truncation keeps the specials (NaN stays NaN)
                raw = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).tobytes()
            tensors[name] = (dtype, [n], raw)
        paths.append(write_raw(tmp_path / f"m{k}.safetensors", tensors))
    return paths


def merged(tmp_path, method, paths, kernel, **kw) -> bytes:
    out = tmp_path / f"{method}-{kernel}-{len(kw)}.safetensors"
    base, *models = paths
    if method == "slerp":
        methods.merge_models(method, models[:1], out, base_model=base, parameters={"t": 0.3},
                             kernel=kernel, progress=False, **kw)
    elif method == "model_stock":
        methods.merge_models(method, models, out, base_model=base, kernel=kernel,
                             progress=False, **kw)
    elif method == "sce":
        methods.merge_models(method, models, out, base_model=base,
                             parameters={"select_topk": 0.4}, kernel=kernel, progress=False,
                             **kw)
    elif method.startswith("della"):
        params = [{"weight": w, "density": d, "epsilon": e}
                  for w, d, e in ((0.7, 0.4, 0.1), (-0.4, 0.6, 0.2), (1.3, 0.25, 0.05))]
        methods.merge_models(method, models, out, base_model=base, model_parameters=params,
                             seed=5, kernel=kernel, progress=False, **kw)
    else:
        params = [{"weight": w, "density": d, **({"gamma": 0.02} if "bread" in method else {})}
                  for w, d in ((0.7, 0.4), (-0.4, 0.6), (1.3, 0.25))]
        extra = {"rescale": True} if method.startswith(("dare", "bread")) else {}
        methods.merge_models(method, models, out, base_model=base, model_parameters=params,
                             parameters={"normalize": True, **extra}, seed=5, kernel=kernel,
                             progress=False, **kw)
    return out.read_bytes()


needs_avx512 = pytest.mark.skipif(not ladle.build_info()["avx512_cpu"],
                                  reason="CPU lacks AVX-512 F/BW/DQ/VL")
# Every vector set, each against the scalar reference.
FAST = [pytest.param("avx2", marks=needs_avx2), pytest.param("avx512", marks=needs_avx512)]


@needs_avx2
def test_auto_selects_the_widest_method_kernels():
    widest = "avx512" if ladle.build_info()["avx512_cpu"] else "avx2"
    assert ladle.build_info()["method_kernels"] == widest


def test_avx512_refused_where_missing(tmp_path):
    if ladle.build_info()["avx512_cpu"]:
        pytest.skip("this CPU has AVX-512")
    paths = make_models(tmp_path, 3, "F32", False)
    with pytest.raises(ladle.LadleValueError, match="AVX-512"):
        merged(tmp_path, "ties", paths, "avx512")


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear",
                                    "breadcrumbs_ties", "slerp", "model_stock", "della",
                                    "della_linear", "sce"])
@pytest.mark.parametrize("dtype,special", [("F32", True), ("BF16", False)])
def test_vector_kernels_match_scalar_bit_for_bit(tmp_path, kernel, method, dtype, special):
    if special and method in ("slerp", "model_stock"):
        special = False  # NaN statistics make no coefficients; odd sizes still apply
    paths = make_models(tmp_path, 3, dtype, special)
    scalar = merged(tmp_path, method, paths, "scalar")
    assert merged(tmp_path, method, paths, kernel) == scalar
    # Chunks of one tile and two threads: tile groups cut short, ties split across tiles.
    assert merged(tmp_path, method, paths, kernel, chunk_elems=2048, threads=2) == scalar


@pytest.mark.parametrize("kernel", FAST)
def test_dare_density_rescale_matches_scalar(tmp_path, kernel):
    paths = make_models(tmp_path, 3, "F32", True, seed=4)
    kw = {"rescale_mode": "density"}
    assert merged(tmp_path, "dare_ties", paths, kernel, **kw) == \
        merged(tmp_path, "dare_ties", paths, "scalar", **kw)


def _ties(paths, out, **kw):
    return methods.merge_models("ties", paths[1:], out, base_model=paths[0],
                                model_parameters=[{"weight": 1.0, "density": 0.5}] * 3,
                                progress=False, **kw)


def test_magnitude_selection_reads_small_tensors_twice(tmp_path):
    # Tensors of at most 256 tiles are sampled whole: their thresholds and tie counts
    # come from the sample (one read), then the apply pass reads them again.
    paths = make_models(tmp_path, 3, "F32", False, seed=2)
    # 4 inputs of F32; the 1-element tensor keeps everything (K = 1), so needs no selection.
    selected = sum(4 * n for _, n in SIZES if n > 1) * 4
    unselected = 4 * 4
    assert _ties(paths, tmp_path / "o.safetensors").bytes_read == 2 * selected + unselected


def _big_models(tmp_path, adversarial: bool):
    """Base + 3 models of one 600,000-element F32 tensor (293 tiles) with many equal
    |delta|; `adversarial`: the 256 tiles the window sample reads (tile
    floor(i * 293 / 256)) hold tiny deltas, the others large ones, so the sample's
    guess of every threshold is far off."""
    n, tile = 600_000, 2048
    rng = np.random.default_rng(9)
    sampled = np.zeros(n, dtype=bool)
    for i in range(256):
        t = i * 293 // 256
        sampled[t * tile:(t + 1) * tile] = True
    base = rng.standard_normal(n).astype(F32)
    paths = [write_raw(tmp_path / "b.safetensors", {"w": ("F32", [n], base.tobytes())})]
    for k in range(3):
        d = (np.round(rng.standard_normal(n) * 8) / 8).astype(F32)
        if adversarial:
            d = np.where(sampled, d * F32(1e-3), d * F32(100.0)).astype(F32)
        paths.append(write_raw(tmp_path / f"x{k}.safetensors",
                               {"w": ("F32", [n], (base + d).astype(F32).tobytes())}))
    return paths, n * 4 * 4


@pytest.mark.parametrize("adversarial", [False, True])
def test_magnitude_selection_windows(tmp_path, adversarial):
    # Larger tensors: a sample of 256 tiles guesses each threshold's bit window, one
    # read counts the elements above it and records those inside; when the rank falls
    # inside (the usual case) the histogram passes are skipped. A missed window (the
    # adversarial layout) or one too big for the budget falls back to them, same bits.
    paths, n_bytes = _big_models(tmp_path, adversarial)
    sample_bytes = 256 * 2048 * 4 * 4
    windowed = _ties(paths, tmp_path / "w.safetensors")
    small = _ties(paths, tmp_path / "s.safetensors", memory_budget=64)
    if adversarial:
        assert windowed.bytes_read >= sample_bytes + 4 * n_bytes
    else:
        assert windowed.bytes_read == sample_bytes + 2 * n_bytes
    assert small.bytes_read >= sample_bytes + 4 * n_bytes
    got = (tmp_path / "w.safetensors").read_bytes()
    assert got == (tmp_path / "s.safetensors").read_bytes()
    _ties(paths, tmp_path / "t.safetensors", kernel="scalar", threads=2, chunk_elems=2048)
    assert got == (tmp_path / "t.safetensors").read_bytes()


def _tile_sums(x: np.ndarray, y: np.ndarray) -> float:
    """fp64 sum of x*y tile by tile (2048) in index order, then the tiles in order."""
    p = x.astype(np.float64) * y.astype(np.float64)
    parts = [np.cumsum(p[i:i + 2048])[-1] for i in range(0, p.size, 2048)]
    return float(np.cumsum(np.array(parts))[-1])


@pytest.mark.parametrize("kernel", ["scalar", *FAST])
@pytest.mark.parametrize("base", [-1, 0])
@pytest.mark.parametrize("n_vecs", [4, 6])  # the AVX-512 Gram holds four inputs; more: AVX2
def test_gram_sums_each_tile_in_index_order(kernel, base, n_vecs):
    # Full-precision values: any other summation order changes the fp64 bits.
    rng = np.random.default_rng(8)
    n = 3 * 2048 * 4 + 2048 * 2 + 777  # whole tile groups, a short group, a partial tile
    vecs = [rng.standard_normal(n).astype(F32) * F32(10.0 ** k) for k in range(n_vecs)]
    vecs[1][5] = F32(1e-41)  # a subnormal
    plan = ladle._core.Plan()
    srcs = [plan.add_memory_source(f"v{k}", v.ctypes.data, v.nbytes) for k, v in enumerate(vecs)]
    plan.add_gram("w", n, [ladle._core.Input(s, 0, "F32") for s in srcs], base)
    vs = [v - vecs[0] for v in vecs[1:]] if base == 0 else vecs
    expected = [_tile_sums(a, b) for a in vs for b in vs]
    for chunk in (0, 2048, 3 * 2048):
        out = ladle._core.run(plan, kinds=[ladle._core.JobKind.gram], threads=2,
                              chunk_elems=chunk, kernel=kernel)
        assert out["grams"][0] == expected


def _dare_l1(kernel: str, threads: int, chunk: int, budget: int, densities) -> tuple[bytes, int]:
    """DARE-TIES with L1 rescale on memory buffers: (output bytes, RNG draws)."""
    rng = np.random.default_rng(11)
    n = 2 * 2048 + 2049 + 13  # whole tiles, a partial word and a partial tile
    vecs = [(np.round(rng.standard_normal(n) * 16) / 16).astype(F32) for _ in range(4)]
    vecs[2][[3, 100, 4097]] = [np.nan, np.inf, -0.0]
    out = np.zeros(n, dtype=F32)
    plan = ladle._core.Plan()
    srcs = [plan.add_memory_source(f"v{k}", v.ctypes.data, v.nbytes) for k, v in enumerate(vecs)]
    sink = plan.add_memory_sink("out", out.ctypes.data, out.nbytes)
    core = ladle._core
    plan.add_task("w", n, sink, 0, "F32", core.Input(srcs[0], 0, "F32"),
                  [core.TaskModel(core.Input(s, 0, "F32", w), d, 0, n)
                   for s, w, d in zip(srcs[1:], (0.7, -0.4, 1.3), densities)],
                  core.Sparsify.random, core.Consensus.sum, True, core.Rescale.l1, 1.0, 7)
    stats = core.run(plan, threads=threads, chunk_elems=chunk, memory_budget=budget,
                     kernel=kernel)
    return out.tobytes(), stats["rng_draws"]


@pytest.mark.parametrize("densities", [(0.4, 0.6, 0.25), (0.0, 1.0, 0.5)])
def test_dare_l1_draws_each_decision_once(densities):
    # The L1 pass records DARE's keep bits and the apply pass reuses them: 3 models × n
    # draws, not 6; with no room for the bits (tiny budget) it redraws, same output, and
    # the AVX2 record/replay kernels match the scalar ones bit for bit.
    n = 2 * 2048 + 2049 + 13
    info = ladle.build_info()
    kernels = (["scalar"] + (["avx2"] if info["avx2_cpu"] else [])
               + (["avx512"] if info["avx512_cpu"] else []))
    want, draws = _dare_l1("scalar", 1, 0, 256 << 20, densities)
    assert draws == 3 * n
    for kernel in kernels:
        for threads, chunk in ((1, 2048), (2, 2048), (2, 0)):
            assert _dare_l1(kernel, threads, chunk, 256 << 20, densities) == (want, 3 * n)
        assert _dare_l1(kernel, 2, 2048, 64, densities) == (want, 6 * n)


def raw(x, dtype: str) -> bytes:
    """fp32 values `x` as `dtype` bytes (BF16: truncated, which keeps NaN a NaN)."""
    if dtype == "F32":
        return x.astype(F32).tobytes()
    if dtype == "F16":
        return x.astype(np.float16).tobytes()
    return (x.astype(F32).view(np.uint32) >> np.uint32(16)).astype(np.uint16).tobytes()


def _mixed_dtype_models(tmp_path, n: int = 600_001):
    """A BF16 base and F16 / BF16 / F32 models of one tensor of more than 256 tiles
    (the window pass runs) with an odd length (vector tails), coarse values (ties at
    the thresholds) and a few NaN/Inf."""
    rng = np.random.default_rng(12)
    base = (np.round(rng.standard_normal(n) * 16) / 16).astype(F32)

    paths = [write_raw(tmp_path / "b.safetensors", {"w": ("BF16", [n], raw(base, "BF16"))})]
    for k, dtype in enumerate(("F16", "BF16", "F32")):
        x = base + (np.round(rng.standard_normal(n) * 8) / 8).astype(F32)
        x[rng.choice(n, size=5, replace=False)] = rng.choice(SPECIALS[:3], size=5)
        paths.append(write_raw(tmp_path / f"x{k}.safetensors", {"w": (dtype, [n], raw(x, dtype))}))
    return paths


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_ties", "dare_linear"])
def test_fused_kernels_match_scalar_on_windowed_mixed_dtypes(tmp_path, kernel, method):
    # The fused window scan (delta never stored) and the fused per-tile task program
    # (every model's delta, sparsification, rescale, weight and the mix in registers)
    # against the scalar reference, on a tensor large enough for the window pass.
    paths = _mixed_dtype_models(tmp_path)
    kw = {"rescale_mode": "density"} if method == "dare_linear" else {}
    scalar = merged(tmp_path, method, paths, "scalar", **kw)
    assert merged(tmp_path, method, paths, kernel, **kw) == scalar
    assert merged(tmp_path, method, paths, kernel, chunk_elems=4096, threads=2, **kw) == scalar


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("method", ["dare_ties", "breadcrumbs_ties"])
def test_l1_norms_of_many_models_match_scalar(tmp_path, kernel, method):
    # The norm pass sums the L1 chains of up to four models in one call: six models
    # make a full block and a partial one; odd sizes leave tile groups short.
    paths = make_models(tmp_path, 6, "F32", True, seed=7)
    base, *models = paths
    params = [{"weight": 0.3 + 0.2 * k, "density": 0.2 + 0.1 * k,
               **({"gamma": 0.01} if "bread" in method else {})} for k in range(6)]

    def run(kernel_name, **kw):
        out = tmp_path / f"{kernel_name}-{len(kw)}.safetensors"
        methods.merge_models(method, models, out, base_model=base, model_parameters=params,
                             parameters={"normalize": True, "rescale": True}, seed=3,
                             kernel=kernel_name, progress=False, **kw)
        return out.read_bytes()

    scalar = run("scalar")
    assert run(kernel) == scalar
    assert run(kernel, chunk_elems=2048, threads=2) == scalar


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("method,rescale", [("dare_ties", "l1"), ("dare_linear", "density")])
def test_dare_draws_at_edge_densities_match_scalar(tmp_path, kernel, method, rescale):
    # The vector draws test u < ceil(density * 2^24) on integers where the reference
    # compares float(u) * 2^-24 < density: exact for every density, checked where
    # density * 2^24 is an integer (0, 0.5, 1), just off one and tiny.
    paths = make_models(tmp_path, 6, "F32", False, seed=11)
    base, *models = paths
    densities = [0.0, 1.0, 0.5, 1e-7, 0.99999994, 0.3]
    params = [{"weight": 0.5, "density": d} for d in densities]

    def run(kernel_name):
        out = tmp_path / f"{kernel_name}.safetensors"
        methods.merge_models(method, models, out, base_model=base, model_parameters=params,
                             parameters={"rescale": True}, rescale_mode=rescale, seed=9,
                             kernel=kernel_name, progress=False)
        return out.read_bytes()

    assert run(kernel) == run("scalar")


def _finite_mixed_models(tmp_path, dtypes):
    """A BF16 base and models of `dtypes` (finite values: a NaN would make every L1
    scale or Gram sum NaN and hide the rest) of tensors of whole tile groups of 8 and
    not; returns (paths, sizes, base values)."""
    rng = np.random.default_rng(21)
    sizes = [("g", 16384), ("h", 3 * 16384 + 2048 * 3 + 5), ("i", 40_000)]

    bases = {name: (np.round(rng.standard_normal(n) * 16) / 16).astype(F32) for name, n in sizes}
    paths = [write_raw(tmp_path / "base.safetensors",
                       {name: ("BF16", [n], raw(bases[name], "BF16")) for name, n in sizes})]
    for k, dtype in enumerate(dtypes):
        tensors = {name: (dtype, [n], raw(bases[name] + (rng.standard_normal(n) / 8), dtype))
                   for name, n in sizes}
        paths.append(write_raw(tmp_path / f"x{k}.safetensors", tensors))
    return paths, sizes, bases


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("budget", ["256MiB", "64KiB"])  # keep bits recorded / redrawn
def test_dare_norm_pass_of_whole_groups_matches_scalar(tmp_path, kernel, budget):
    # The fused DARE norm pass (dare_norms: whole groups of 8 tiles, its deltas, draws
    # and keep bits in registers) against the composed scalar one: six models (a block
    # of four and one of two) of mixed dtypes, lengths of whole groups and not, densities
    # at the edges.
    paths, sizes, bases = _finite_mixed_models(tmp_path,
                                               ["BF16", "F16", "F32", "BF16", "F32", "F16"])
    densities = [0.4, 0.0, 1.0, 1e-7, 0.6, 0.25]
    params = [{"weight": 0.5 + 0.1 * k, "density": d} for k, d in enumerate(densities)]

    def run(kernel_name):
        out = tmp_path / f"{kernel_name}.safetensors"
        methods.merge_models("dare_ties", paths[1:], out, base_model=paths[0],
                             model_parameters=params, parameters={"rescale": True}, seed=13,
                             kernel=kernel_name, memory_budget=budget, threads=2,
                             progress=False)
        return out.read_bytes()

    scalar = run("scalar")
    assert run(kernel) == scalar
    got = ladle.open(tmp_path / "scalar.safetensors")
    for name, n in sizes:
        info = got.tensors[name]
        values = np.fromfile(info.file, dtype=np.uint16, count=n, offset=info.offset)
        merged_f32 = (values.astype(np.uint32) << np.uint32(16)).view(F32)
        assert np.isfinite(merged_f32).all()
        assert (merged_f32 != bases[name]).mean() > 0.3  # the kept deltas moved it


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("method", ["model_stock", "slerp"])
def test_gram_of_inputs_read_in_place_matches_scalar(tmp_path, kernel, method):
    # gram_inputs (whole groups read straight from the files, deltas in registers)
    # against the staged scalar Gram: BF16/F16/F32 inputs, with a base (model stock's
    # deltas) and without (SLERP's two models), groups whole and not.
    paths, _, _ = _finite_mixed_models(tmp_path, ["F16", "BF16", "F32"])
    scalar = merged(tmp_path, method, paths, "scalar")
    assert merged(tmp_path, method, paths, kernel) == scalar
    assert merged(tmp_path, method, paths, kernel, chunk_elems=3 * 16384, threads=2) == scalar
