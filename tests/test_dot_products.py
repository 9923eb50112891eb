"""The C++ streamed dot-product reduction against numpy in fp64."""

from __future__ import annotations

import numpy as np
import pytest

from ladle import _core
from ladle.errors import FormatError, LadleValueError

from reference import from_f32, random_raw, to_f32


def _plan_with(buffers: list[np.ndarray]) -> _core.Plan:
    plan = _core.Plan()
    for i, b in enumerate(buffers):
        plan.add_memory_source(f"buf{i}", b.ctypes.data, b.nbytes)
    return plan


def dot_products(plan: _core.Plan, jobs: list, **options) -> list[list[float]]:
    """The plan's dot jobs (name, n_elems, lhs, [x_k]) as one run of kind dot."""
    plan.clear_jobs()
    for name, n_elems, lhs, inputs in jobs:
        plan.add_dot(name, n_elems, _core.Input(*lhs), [_core.Input(*x) for x in inputs])
    return _core.run(plan, kinds=[_core.JobKind.dot], **options)["dots"]


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_dots_match_fp64_reference(dtype, threads):
    rng = np.random.default_rng(0)
    n = 70_001
    raws = [np.frombuffer(random_raw(rng, n, dtype), np.uint8).copy() for _ in range(4)]
    plan = _plan_with(raws)
    jobs = [("t", n, (0, 0, dtype), [(k, 0, dtype) for k in (1, 2, 3)]),
            ("head", 5, (1, 8, dtype), [(0, 0, dtype)])]
    out = dot_products(plan, jobs, threads=threads, chunk_elems=16384)
    vals = [to_f32(r.tobytes(), dtype).astype(np.float64) if dtype != "F64"
            else r.view(np.float64) for r in raws]
    for k in (1, 2, 3):
        expect = float(np.dot(vals[0], vals[k]))
        assert out[0][k - 1] == pytest.approx(expect, rel=1e-12, abs=1e-9)
    off = 8 // {"F32": 4, "BF16": 2, "F16": 2, "F64": 8}[dtype]
    assert out[1][0] == pytest.approx(float(np.dot(vals[1][off:off + 5], vals[0][:5])), rel=1e-12)


def _in_order(g: np.ndarray, x: np.ndarray) -> float:
    """The documented order (csrc/reduce.h, the Gram pass's): tiles of 2048 in element
    order, then the tensor tile by tile, each sum sequential from +0."""
    p = g.astype(np.float64) * x.astype(np.float64)
    tiles = [np.cumsum(np.concatenate([[0.0], p[i:i + 2048]]))[-1] for i in range(0, p.size, 2048)]
    return float(np.cumsum(np.concatenate([[0.0], tiles]))[-1])


def test_dots_do_not_depend_on_threads_chunks_or_budget():
    # Full-precision values: any other grouping of the fp64 sums changes their bits.
    rng = np.random.default_rng(1)
    n = 200_003  # whole tiles and a short one
    a, b, c = (rng.standard_normal(n).astype(np.float32) * np.float32(10.0 ** k) for k in range(3))
    plan = _plan_with([a, b, c])
    jobs = [("x", n, (0, 0, "F32"), [(1, 0, "F32"), (2, 0, "F32")])]
    ref = dot_products(plan, jobs, threads=1, chunk_elems=16384)
    assert ref[0] == [_in_order(a, b), _in_order(a, c)]
    for threads in (1, 2, 4):
        for options in ({"chunk_elems": 16384}, {"chunk_elems": 5000}, {"chunk_elems": 49152},
                        {"chunk_elems": 1 << 22}, {"memory_budget": 1 << 20}, {}):
            assert dot_products(plan, jobs, threads=threads, **options) == ref, (threads, options)


def test_dots_reject_out_of_range_and_int_dtypes():
    a = np.zeros(10, np.float32)
    plan = _plan_with([a])
    with pytest.raises(FormatError, match="tensor 'x'.*exceeds the 40 bytes"):
        dot_products(plan, [("x", 11, (0, 0, "F32"), [(0, 0, "F32")])])
    with pytest.raises(LadleValueError, match="dtype I32"):
        dot_products(plan, [("x", 2, (0, 0, "F32"), [(0, 0, "I32")])])
    assert from_f32(np.zeros(1, np.float32), "F32")  # reference helpers importable
