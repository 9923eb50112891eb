"""One _core.Plan holds the jobs of every kind; _core.run runs a chosen set of kinds,
validating them all before any is written; jobs are built from bound enums and small
bound classes (Input, TaskModel, DellaModel), not strings and positional tuples."""

from __future__ import annotations

import numpy as np
import pytest

from ladle import _core
from ladle.errors import LadleValueError

K = _core.JobKind


def _plan(n: int = 64):
    xs = [np.arange(n, dtype=np.float32) * (k + 1) for k in range(3)]
    outs = [np.zeros(n, dtype=np.float32) for _ in range(2)]
    plan = _core.Plan()
    srcs = [plan.add_memory_source(f"x{k}", x.ctypes.data, x.nbytes) for k, x in enumerate(xs)]
    sinks = [plan.add_memory_sink(f"o{k}", o.ctypes.data, o.nbytes) for k, o in enumerate(outs)]
    plan.add_job("s", K.sum, n, sinks[0], 0, "F32",
                 [_core.Input(srcs[0], 0, "F32", 0.5), _core.Input(srcs[1], 0, "F32", 0.5)])
    return plan, xs, outs, srcs, sinks


def _add_task(plan, srcs, sink, n, density=1.0):
    plan.add_task("t", n, sink, 0, "F32", _core.Input(srcs[0], 0, "F32"),
                  [_core.TaskModel(_core.Input(s, 0, "F32", 1.0), density, 0, n)
                   for s in srcs[1:]],
                  _core.Sparsify.none, _core.Consensus.none, False, _core.Rescale.none, 1.0, 0)


def test_kinds_run_separately_or_together():
    plan, xs, outs, srcs, sinks = _plan()
    _add_task(plan, srcs, sinks[1], xs[0].size)
    plan.add_gram("g", xs[0].size, [_core.Input(s, 0, "F32") for s in srcs[:2]], -1)
    assert [plan.count(k) for k in (K.sum, K.task, K.gram, K.copy)] == [1, 1, 1, 0]
    assert plan.n_jobs == 3
    out = _core.run(plan, kinds=[K.sum])
    assert "grams" not in out and outs[0].tolist() == (1.5 * xs[0]).tolist()
    assert not outs[1].any()  # the task job did not run
    out = _core.run(plan, kinds=[K.task, K.gram])
    assert outs[1].tolist() == (xs[1] + xs[2] - xs[0]).tolist()
    a, b = xs[0].astype(np.float64), xs[1].astype(np.float64)
    assert out["grams"] == [[a @ a, a @ b, b @ a, b @ b]]
    plan.clear_jobs([K.gram, K.sum])
    assert [plan.count(k) for k in (K.sum, K.task, K.gram)] == [0, 1, 0]
    plan.clear_jobs()
    assert plan.n_jobs == 0


def test_a_bad_job_of_one_kind_stops_the_others_before_they_write():
    plan, xs, outs, srcs, sinks = _plan()
    _add_task(plan, srcs, sinks[1], xs[0].size, density=1.5)
    with pytest.raises(LadleValueError, match="tensor 't': density 1.5 outside"):
        _core.run(plan)  # every kind: the task job is checked before the sum runs
    assert not outs[0].any()


def test_bound_values_check_what_they_are_given():
    x = _core.Input(3, 8, "BF16", 0.25)
    assert (x.source, x.offset, x.dtype, x.weight) == (3, 8, "BF16", 0.25)
    with pytest.raises(LadleValueError, match="unknown dtype 'F99'"):
        _core.Input(0, 0, "F99")
    m = _core.DellaModel(x, 0.5, 0.1)
    assert (m.input.offset, m.density, m.epsilon) == (8, 0.5, np.float32(0.1))
    plan = _core.Plan()
    with pytest.raises(LadleValueError, match="add_job takes sum, copy, max or nearswap jobs, "
                                              "not task \\(add_task\\)"):
        plan.add_job("w", K.task, 1, 0, 0, "F32", [x])
    with pytest.raises(TypeError):
        plan.add_task("w", 1, 0, 0, "F32", x, [], "magnitude", _core.Consensus.none, False,
                      _core.Rescale.none, 1.0, 0)  # a string is not a Sparsify


def test_cuda_runs_the_same_plan_of_every_kind():
    from ladle.engine.cuda import cuda_info

    if not cuda_info()["compiled"]:
        pytest.skip("CUDA backend not built")
    import ladle._cuda as cuda

    plan, xs, outs, srcs, sinks = _plan()
    _add_task(plan, srcs, sinks[1], xs[0].size)
    _core.run(plan)
    want = [o.copy() for o in outs]
    for o in outs:
        o[:] = 0
    cuda.run(plan._capsule(), kinds=[K.sum, K.task], emulate=True)
    assert all(o.tobytes() == w.tobytes() for o, w in zip(outs, want))
    plan.add_sce("e", xs[0].size, sinks[1], 0, "F32", _core.Input(srcs[0], 0, "F32"),
                 [_core.Input(srcs[1], 0, "F32"), _core.Input(srcs[0], 0, "F32")], 0.5)
    _core.run(plan, kinds=[K.sce])  # SCE runs on the device too, to the same bytes
    want = outs[1].copy()
    outs[1][:] = 0
    cuda.run(plan._capsule(), kinds=[K.sce], emulate=True)
    assert outs[1].tobytes() == want.tobytes() and want.any()
    plan.add_dot("g", xs[0].size, _core.Input(srcs[0], 0, "F32"), [_core.Input(srcs[1], 0, "F32")])
    # Dot products too: every kind runs on the device, to the same values.
    dots = _core.run(plan, kinds=[K.dot])["dots"]
    assert cuda.run(plan._capsule(), kinds=[K.dot], emulate=True)["dots"] == dots
    assert all(cuda.supports(k) for k in K.__members__.values())
