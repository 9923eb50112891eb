"""The string enums of ladle.engine.kinds name exactly the sets the C++ core accepts,
and the public API keeps taking plain strings as well as the members."""

from __future__ import annotations

import pytest

import ladle
from ladle import _core
from ladle.engine.kinds import IntPolicy, JobKind, Kernel, core_enum, core_kinds, parse_kind
from ladle.engine.plan import INT_POLICIES, check_int_policy
from ladle.errors import LadleValueError


def test_job_kinds_are_the_cores() -> None:
    assert list(JobKind) == list(_core.JobKind.__members__)  # the same names, in order
    assert all(_core.supports(k) for k in core_kinds(JobKind))  # the CPU runs them all
    with pytest.raises(LadleValueError, match="job kind must be one of sum, .*not 'median'"):
        core_kinds(["median"])  # and the core knows no others


def test_method_settings_are_the_cores() -> None:
    assert core_enum(_core.Sparsify, "magnitude", "sparsify") == _core.Sparsify.magnitude
    assert list(_core.Consensus.__members__) == ["none", "sum", "count"]
    assert list(_core.DellaRescale.__members__) == ["none", "l1", "density"]
    with pytest.raises(LadleValueError, match="rescale must be one of none, density, l1, "
                                              "not 'l2'"):
        core_enum(_core.Rescale, "l2", "rescale")


def test_kernels_are_the_cores() -> None:
    for k in Kernel:  # each parses (avx2 may still be unavailable on this CPU)
        try:
            _core.run(_core.Plan(), kernel=k)
        except LadleValueError as e:
            assert "unknown kernel" not in str(e)
    with pytest.raises(LadleValueError, match="auto, scalar, avx2"):
        _core.run(_core.Plan(), kernel="sse9")


def test_members_are_their_strings() -> None:
    assert JobKind.SUM == "sum" and f"{IntPolicy.MAX}" == "max" and str(Kernel.AVX2) == "avx2"
    assert INT_POLICIES == ("first", "max", "error")
    assert check_int_policy("error") == "error" and check_int_policy(IntPolicy.MAX) == "max"
    with pytest.raises(LadleValueError, match="int_policy must be one of first, max, error"):
        check_int_policy("last")
    with pytest.raises(LadleValueError, match="kernel must be one of auto, scalar, avx2, avx512, "
                                              "not 'fast'"):
        parse_kind(Kernel, "fast", "kernel")


def test_api_takes_members_and_strings(tmp_path) -> None:
    import numpy as np

    a = {"w": np.arange(6, dtype=np.float32), "n": np.array([3, 9], dtype=np.int64)}
    b = {"w": np.ones(6, dtype=np.float32), "n": np.array([5, 1], dtype=np.int64)}
    ladle.save(a, tmp_path / "a.safetensors")
    ladle.save(b, tmp_path / "b.safetensors")
    inputs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    plain = ladle.merge(inputs, [0.5, 0.5], tmp_path / "s.safetensors", int_policy="max",
                        kernel="scalar", progress=False)
    typed = ladle.merge(inputs, [0.5, 0.5], tmp_path / "e.safetensors",
                        int_policy=IntPolicy.MAX, kernel=Kernel.SCALAR, progress=False)
    assert plain.kernel == typed.kernel
    body = (tmp_path / "s.safetensors").read_bytes()
    assert body == (tmp_path / "e.safetensors").read_bytes()
    with pytest.raises(LadleValueError, match="kernel must be one of"):
        ladle.merge(inputs, [0.5, 0.5], tmp_path / "x.safetensors", kernel="fast",
                    progress=False)
    assert not (tmp_path / "x.safetensors").exists()
