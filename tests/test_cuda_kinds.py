"""Job kinds the CUDA backend runs besides weighted sums and task programs (nearswap,
SCE, DELLA) on the emulator and, when present, the GPU: byte-equal to the CPU engine on odd
sizes (not multiples of a tile), mixed BF16/F16/F32 inputs, NaN/Inf/subnormal values,
several chunk lengths, budgets and worker counts. The sweep over every method is
tests/test_cuda.py's; these add the values and options it does not cover."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from test_cuda import DEVICES
from test_methods_sce import nan_variance_models

import ladle
from ladle.methods import methods

from reference import from_f32
from st_io import write_raw

# Around the weighted-sum kernel's 4096-element tile and the methods' 2048 one.
SIZES = [("a", [1]), ("b", [7]), ("c", [2047]), ("d", [4097]), ("e", [9001]), ("m", [33, 61])]
SPECIALS = np.array([np.nan, np.inf, -np.inf, 1e-40, -0.0, 3e38, -3e38], dtype=np.float32)
# Default chunk, the smallest chunks, a budget that cuts 9001 elements, 1 and 4 workers.
OPTIONS = [{}, {"chunk_elems": 1}, {"chunk_elems": 2048, "threads": 1},
           {"memory_budget": "64KiB", "threads": 4}]


def _models(tmp_path, n_models, dtypes, seed, specials=True):
    """Base + n models with coarse deltas (ties), dtypes[k] for model k (0: the base),
    and a few NaN/Inf/subnormal values sprinkled in (each model its own places)."""
    rng = np.random.default_rng(seed)
    raws = [{} for _ in range(n_models + 1)]
    for name, shape in SIZES:
        n = int(np.prod(shape))
        base = rng.standard_normal(n).astype(np.float32)
        for k in range(n_models + 1):
            x = base + (np.round(rng.standard_normal(n) * 4) / 64 if k else 0)
            x = x.astype(np.float32)
            if specials and n > 1:
                where = rng.choice(n, size=min(n // 2, len(SPECIALS)), replace=False)
                x[where] = SPECIALS[:where.size]
            raws[k][name] = (dtypes[k], shape, from_f32(x, dtypes[k]))
    return [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]


def _same_as_cpu(tmp_path, run, device):
    """run(out, device, **options) on the CPU once, then on `device` with OPTIONS."""
    expected = tmp_path / "cpu.safetensors"
    run(expected, "cpu")
    for i, options in enumerate(OPTIONS):
        out = tmp_path / f"dev{i}.safetensors"
        run(out, device, **options)
        assert out.read_bytes() == expected.read_bytes(), options


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes,out_dtype", [(["BF16", "BF16"], None), (["F16", "F32"], None),
                                               (["F32", "BF16"], "F16"),
                                               (["BF16", "F16"], "F32")])
def test_nearswap_matches_the_cpu_engine(tmp_path, device, dtypes, out_dtype):
    paths = _models(tmp_path, 1, dtypes, seed=len(dtypes[0]) + len(dtypes[1]))
    _same_as_cpu(tmp_path, lambda out, dev, **o: _nearswap(paths, out, dev, [0.0005, 0.01, 0.2],
                                                           dtype=out_dtype, **o), device)


@pytest.mark.parametrize("device", DEVICES)
def test_kinds_run_on_the_device_backend(device):
    """The kinds are the device's own: no CPU fallback in method_engine."""
    from ladle.methods.method_engine import MethodEngine

    engine = MethodEngine(device, threads=0, memory_budget=1 << 20, chunk_elems=0,
                          kernel="auto")
    assert all(engine.supports(k) for k in ("nearswap", "sce", "della"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["nearswap", "sce"])
def test_check_finite_on_device(tmp_path, device, kind):
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    nan = np.array([1.0, np.nan, 2.0], dtype=np.float32).tobytes()
    b = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [3], nan)})
    out = tmp_path / "o.safetensors"
    with pytest.raises(ladle.NonFiniteError, match="b.safetensors: tensor 'w'.*element 1"):
        if kind == "nearswap":
            _nearswap([a, b], out, device, 0.5, check_finite=True)
        else:
            _sce([a, a, b], out, device, 0.5, check_finite=True)
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


def _nearswap(paths, out, device, t, **options):
    methods.nearswap(paths[0], paths[1], t, out, device=device, progress=False, **options)


def _sce(paths, out, device, select_topk, **options):
    methods.merge_models("sce", paths[1:], out, base_model=paths[0],
                         parameters={"select_topk": select_topk}, device=device,
                         progress=False, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("select_topk", [0.3, [0.9, 0.05], 1.0, 0.0])
@pytest.mark.parametrize("dtypes", [["BF16"] * 4, ["F16", "BF16", "F32", "F16"], ["F32"] * 4])
def test_sce_matches_the_cpu_engine(tmp_path, device, select_topk, dtypes):
    """Coarse deltas, so many variances tie at the threshold (inside tiles and chunks)."""
    paths = _models(tmp_path, 3, dtypes, seed=7)
    _same_as_cpu(tmp_path, lambda out, dev, **o: _sce(paths, out, dev, select_topk, **o),
                 device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_models", [1, 2, 5])
def test_sce_model_counts_and_output_dtypes(tmp_path, device, n_models):
    """One model (every variance 0: nothing selected), two, five; F16 and F32 outputs."""
    paths = _models(tmp_path, n_models, ["BF16"] * (n_models + 1), seed=n_models)
    for dtype in ("F16", "F32"):
        (tmp_path / dtype).mkdir()
        _same_as_cpu(tmp_path / dtype, functools.partial(_sce_into, paths, 0.5, dtype), device)


@pytest.mark.parametrize("device", DEVICES)
def test_sce_nan_variances_match_the_cpu_engine(tmp_path, device):
    """The threshold among NaN variances of many payloads: ties by index on the device too."""
    paths, _ = nan_variance_models(tmp_path)
    _same_as_cpu(tmp_path, lambda out, dev, **o: _sce(paths, out, dev, 0.3, **o), device)


def _sce_into(paths, select_topk, dtype, out, device, **options):
    _sce(paths, out, device, select_topk, dtype=dtype, **options)


# DELLA: rank groups of rows ([33, 61]), of a strided dimension 1 ([4, 6, 5]), of a whole
# 1-D tensor (one group of 9001: the shared-memory sort), a scalar, rows over several
# L1 units ([300, 61]); every prune kind.
DELLA_SHAPES = [("a", [1]), ("b", [7]), ("c", [2047]), ("e", [9001]), ("m", [33, 61]),
                ("k", [4, 6, 5]), ("s", []), ("r", [300, 61])]
DELLA_MODELS = [{"weight": 1.0, "density": 0.5, "epsilon": 0.2},
                {"weight": -0.6, "density": [0.3, 0.8], "epsilon": 0.1},
                {"weight": 0.4, "density": 1.0},   # every delta kept
                {"weight": 0.7, "density": 0.0}]   # every delta dropped
# A budget every rank block above fits (the CPU refuses a block over half the budget).
DELLA_OPTIONS = [{}, {"chunk_elems": 1}, {"chunk_elems": 4096}, {"memory_budget": "2MiB"}]


def _della_models(tmp_path, dtypes, seed):
    rng = np.random.default_rng(seed)
    raws = [{} for _ in dtypes]
    for name, shape in DELLA_SHAPES:
        n = int(np.prod(shape))
        base = rng.standard_normal(n).astype(np.float32)
        for k, dtype in enumerate(dtypes):
            x = base + (np.round(rng.standard_normal(n) * 4) / 64 if k else 0)  # ties
            x = x.astype(np.float32)
            if k and n > 7:
                x[rng.choice(n, size=len(SPECIALS), replace=False)] = SPECIALS
            raws[k][name] = (dtype, shape, from_f32(x, dtype))
    return [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]


def _della(paths, out, device, method="della", rescale_mode="l1", parameters=None,
           **options):
    methods.merge_models(method, paths[1:], out, base_model=paths[0],
                         parameters=parameters or {}, model_parameters=DELLA_MODELS,
                         rescale_mode=rescale_mode, seed=5, device=device, progress=False,
                         **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method,rescale_mode,parameters", [
    ("della", "l1", {"lambda": 0.9}), ("della", "density", {}),
    ("della", "l1", {"rescale": False, "normalize": False}), ("della_linear", "l1", {})])
def test_della_matches_the_cpu_engine(tmp_path, device, method, rescale_mode, parameters):
    paths = _della_models(tmp_path, ["BF16", "F16", "F32", "BF16", "F16"], seed=3)
    expected = tmp_path / "cpu.safetensors"
    _della(paths, expected, "cpu", method, rescale_mode, parameters)
    for i, options in enumerate(DELLA_OPTIONS):
        out = tmp_path / f"dev{i}.safetensors"
        _della(paths, out, device, method, rescale_mode, parameters, **options)
        assert out.read_bytes() == expected.read_bytes(), options


@pytest.mark.parametrize("device", DEVICES)
def test_della_long_rank_group_matches_the_cpu_engine(tmp_path, device):
    """A group longer than the device's shared-memory sort: ranks counted instead."""
    rng = np.random.default_rng(9)
    n = 16_400
    base = rng.standard_normal(n).astype(np.float32)
    x = (base + np.round(rng.standard_normal(n) * 4) / 64).astype(np.float32)
    paths = [write_raw(tmp_path / f"m{k}.safetensors", {"w": ("F32", [n], v.tobytes())})
             for k, v in enumerate([base, x])]
    outs = []
    for dev in ("cpu", device):
        outs.append(tmp_path / f"{dev}.safetensors")
        methods.merge_models("della", paths[1:], outs[-1], base_model=paths[0],
                             model_parameters=[{"weight": 1.0, "density": 0.5,
                                                "epsilon": 0.3}],
                             device=dev, progress=False)
    assert outs[0].read_bytes() == outs[1].read_bytes()


@pytest.mark.parametrize("device", DEVICES)
def test_della_refusals_match_the_cpu_engine(tmp_path, device):
    """A rank block over half the budget is refused by name on every device; so are
    non-finite inputs (check_finite), before anything is written."""
    paths = _della_models(tmp_path, ["F32"] * 5, seed=4)
    for options, error in [({"memory_budget": "64KiB"}, "raise --memory-budget"),
                           ({"check_finite": True}, "non-finite value")]:
        messages = []
        for dev in ("cpu", device):
            out = tmp_path / f"{dev}.safetensors"
            with pytest.raises(ladle.LadleError, match=error) as info:
                _della(paths, out, dev, threads=1, **options)
            messages.append(str(info.value))
            assert not out.exists() and not list(tmp_path.glob("*partial*"))
        assert messages[0] == messages[1]


# ---- dot products (the learned soup's <g, x_k>): the CPU's tile order, same bits ----

def _dot_plan(rng, n, dtypes, n_inputs):
    """A plan of one dot job (g, x_1..x_n_inputs) over memory buffers, dtypes cycling."""
    from ladle import _core

    bufs = []
    for k in range(n_inputs + 1):
        x = (rng.standard_normal(n) * 10.0 ** (k % 5)).astype(np.float32)
        if k:  # g stays finite, so most dots are too; x_k cycles through the specials
            x[rng.choice(n, size=min(n, 3), replace=False)] = SPECIALS[::-1][k % len(SPECIALS)]
        dtype = dtypes[k % len(dtypes)]
        raw = x.astype(np.float64).tobytes() if dtype == "F64" else from_f32(x, dtype)
        bufs.append((np.frombuffer(raw, np.uint8).copy(), dtype))
    plan = _core.Plan()
    srcs = [plan.add_memory_source(f"b{k}", b.ctypes.data, b.nbytes) for k, (b, _) in enumerate(bufs)]
    inputs = [_core.Input(s, 0, d) for s, (_, d) in zip(srcs, bufs)]
    plan.add_dot("t", n, inputs[0], inputs[1:])
    return plan, bufs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,dtypes,n_inputs", [(9001, ["F32"], 3), (2047, ["BF16", "F16"], 2),
                                               (70_001, ["F64", "F32", "BF16"], 4),
                                               (4097, ["F16", "F32"], 70)])
def test_dot_products_on_device_match_cpu(device, n, dtypes, n_inputs):
    # 70 inputs: more than one model table (63 beside g), so two launches per chunk.
    from ladle import _core
    from ladle.engine.cuda import require

    rng = np.random.default_rng(n + n_inputs)
    plan, _bufs = _dot_plan(rng, n, dtypes, n_inputs)
    want = _core.run(plan, kinds=[_core.JobKind.dot], threads=2)["dots"]
    mod, index, emulate = require(device)
    for options in ({}, {"chunk_elems": 2048}, {"chunk_elems": 6144}, {"memory_budget": 1 << 20}):
        got = mod.run(plan._capsule(), kinds=[_core.JobKind.dot], device=index, workers=2,
                      emulate=emulate, **options)["dots"]
        got_a, want_a = np.array(got), np.array(want)
        nan = np.isnan(want_a)  # a GPU need not keep the CPU's NaN payloads
        assert np.array_equal(np.isnan(got_a), nan), options
        assert np.array_equal(got_a[~nan].view(np.uint64), want_a[~nan].view(np.uint64)), options
        assert (~nan).any()  # finite values are compared bit for bit
    assert mod.supports(_core.JobKind.dot)
