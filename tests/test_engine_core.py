"""The C++ core's shared error path: every LADLE_CHECK failure reaches Python as a
ladle.errors exception that records the check's C++ file:line."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ladle
from ladle.engine.cuda import cuda_info
from ladle.engine.kinds import core_kinds
from ladle.errors import LadleValueError


def test_check_failure_records_cpp_location():
    v = np.zeros(16, dtype=np.float32)
    plan = ladle._core.Plan()
    src = plan.add_memory_source("v", v.ctypes.data, v.nbytes)
    plan.add_gram("w", 16, [ladle._core.Input(src, 0, "F32")], 5)  # base index out of range
    with pytest.raises(LadleValueError, match="base index 5 out of range") as info:
        ladle._core.run(plan, kinds=[ladle._core.JobKind.gram])
    assert re.fullmatch(r"methods_cpu\.cc:\d+", info.value.cpp_location)


def test_backends_declare_the_job_kinds_they_run():
    for kind in core_kinds(("sum", "copy", "max", "task", "gram", "dot", "della", "sce")):
        assert ladle._core.supports(kind)
    with pytest.raises(LadleValueError, match="job kind must be one of sum, copy, .*not 'ties'"):
        core_kinds(["ties"])


@pytest.mark.skipif(not cuda_info()["compiled"], reason="CUDA backend not built")
def test_cuda_backend_declares_every_job_kind():
    import ladle._cuda as cuda_module

    # Issue 16: weighted sums, nearswap, every method's kind and dot products run on CUDA.
    assert all(cuda_module.supports(k) for k in core_kinds(("sum", "copy", "max", "nearswap",
                                                            "task", "gram", "dot", "della",
                                                            "sce")))
