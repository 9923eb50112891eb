"""Kernel throughput: a weighted sum of two or four in-memory tensors through the engine
(memory sources and sink, no file I/O), per dtype and kernel implementation.

``extra_info["gb_per_s"]`` = (bytes read + written) / median time. Each benchmark also
checks a prefix of the output against a numpy reference of the arithmetic contract.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_bytes, gb_per_s

from ladle import _core

ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4}
_CHECK_ELEMS = 1 << 16
_arrays: dict[str, list[np.ndarray]] = {}


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16 (finite values)."""
    u = x.view(np.uint32)
    return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def inputs(dtype: str, n: int) -> list[np.ndarray]:
    """``n`` random arrays of ``LADLE_BENCH_MB`` each (cached per dtype)."""
    if dtype not in _arrays:
        rng = np.random.default_rng(0)
        n_elems = max(1, bench_bytes() // ITEM_BYTES[dtype])
        table = (np.sort(rng.standard_normal(1 << 16, dtype=np.float32)) * 0.02)
        table_bits = (table.view(np.uint32) >> 16).astype(np.uint16)
        arrays = []
        for _ in range(4):
            bits = table_bits[rng.integers(0, 1 << 16, size=n_elems, dtype=np.uint16)]
            if dtype == "BF16":
                arrays.append(bits)
            else:
                x = _bf16_bits_to_f32(bits)
                arrays.append(x if dtype == "F32" else x.astype(np.float16))
        _arrays[dtype] = arrays
    return _arrays[dtype][:n]


def reference(xs: list[np.ndarray], weights: list[float], dtype: str) -> np.ndarray:
    """The arithmetic contract in numpy: fp32 products, summed in input order."""
    as_f32 = [_bf16_bits_to_f32(x) if dtype == "BF16" else x.astype(np.float32) for x in xs]
    acc = np.float32(weights[0]) * as_f32[0]
    for x, w in zip(as_f32[1:], weights[1:]):
        acc = acc + np.float32(w) * x
    if dtype == "BF16":
        return _f32_to_bf16_bits(acc)
    return acc.astype(np.float16 if dtype == "F16" else np.float32)


@pytest.mark.parametrize("n_inputs", [2, 4])
@pytest.mark.parametrize("kernel", ["scalar", "avx2"])
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_weighted_sum(benchmark, dtype: str, kernel: str, n_inputs: int) -> None:
    """Merge ``n_inputs`` in-memory tensors with ``kernel``; GB/s in extra_info."""
    info = _core.build_info()
    if kernel == "avx2" and not (info["avx2_compiled"] and info["avx2_cpu"]):
        pytest.skip("AVX2 kernels not compiled in or not supported by this CPU")
    xs = inputs(dtype, n_inputs)
    out = np.empty_like(xs[0])
    weights = [1.0 / n_inputs] * n_inputs
    plan = _core.Plan()
    sources = [plan.add_memory_source(f"x{k}", x.ctypes.data, x.nbytes) for k, x in enumerate(xs)]
    sink = plan.add_memory_sink("out", out.ctypes.data, out.nbytes)
    plan.add_job("t", _core.JobKind.sum, xs[0].size, sink, 0, dtype,
                 [_core.Input(s, 0, dtype, w) for s, w in zip(sources, weights)])

    stats = benchmark(_core.run, plan, kernel=kernel)

    n_bytes = (n_inputs + 1) * out.nbytes
    benchmark.extra_info.update(
        dtype=dtype, kernel=stats["kernel"], n_inputs=n_inputs, n_elems=int(out.size),
        n_bytes=n_bytes, threads=stats["threads"], chunk_elems=stats["chunk_elems"],
        gb_per_s=gb_per_s(benchmark, n_bytes),
        engine_gb_per_s=n_bytes / max(stats["seconds"], 1e-9) / 1e9)
    head = [x[:_CHECK_ELEMS] for x in xs]
    np.testing.assert_array_equal(out[:_CHECK_ELEMS], reference(head, weights, dtype))
