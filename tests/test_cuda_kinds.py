"""Job kinds the CUDA backend runs besides weighted sums and task programs (nearswap,
SCE) on the emulator and, when present, the GPU: byte-equal to the CPU engine on odd
sizes (not multiples of a tile), mixed BF16/F16/F32 inputs, NaN/Inf/subnormal values,
several chunk lengths, budgets and worker counts. The sweep over every method is
tests/test_cuda.py's; these add the values and options it does not cover."""

from __future__ import annotations

import numpy as np
import pytest
from test_cuda import DEVICES

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

    def run(out, dev, **options):
        methods.nearswap(paths[0], paths[1], [0.0005, 0.01, 0.2], out, dtype=out_dtype,
                         device=dev, progress=False, **options)
    _same_as_cpu(tmp_path, run, device)


@pytest.mark.parametrize("device", DEVICES)
def test_nearswap_runs_on_the_device_backend(device):
    """The kind is the device's own: no CPU fallback in method_engine."""
    from ladle.methods.method_engine import MethodEngine

    engine = MethodEngine(device, threads=0, memory_budget=1 << 20, chunk_elems=0,
                          kernel="auto")
    assert engine.supports("nearswap")


@pytest.mark.parametrize("device", DEVICES)
def test_nearswap_check_finite_on_device(tmp_path, device):
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    nan = np.array([1.0, np.nan, 2.0], dtype=np.float32).tobytes()
    b = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [3], nan)})
    out = tmp_path / "o.safetensors"
    with pytest.raises(ladle.NonFiniteError, match="b.safetensors: tensor 'w'.*element 1"):
        methods.nearswap(a, b, 0.5, out, check_finite=True, device=device, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
