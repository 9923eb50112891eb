"""Per-tensor overhead paths of the C++ core (issue 14, 10^6-tensor checkpoints):
``Plan.add_jobs`` (one call per shard instead of one per tensor), the CPython-API
reading of ``serialize_header``'s entries, and the header parser that hands each
tensor entry over as soon as it is parsed instead of building a JSON tree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ladle import _core
from ladle.errors import FormatError, LadleValueError


def _run(jobs_in_one_call: bool) -> np.ndarray:
    """Sum, copy and max jobs over memory sources into one memory sink."""
    a = np.arange(8, dtype=np.float32) / 3
    b = np.arange(8, dtype=np.float64) * 1e-3
    ints = np.array([3, 9, 1, 4], dtype=np.int32), np.array([5, 2, 8, 4], dtype=np.int32)
    out = np.zeros(64, dtype=np.uint8)
    plan = _core.Plan()
    src = [plan.add_memory_source(f"s{i}", x.ctypes.data, x.nbytes)
           for i, x in enumerate((a, b, *ints))]
    sink = plan.add_memory_sink("out", out.ctypes.data, out.nbytes)
    jobs = [
        ("sum32", "sum", 8, sink, 0, "F32", [(src[0], 0, "F32", 0.1), (src[1], 0, "F64", 0.9)]),
        ("sum64", "sum", 2, sink, 32, "F64", [(src[1], 16, "F64", 1 / 3)]),
        ("copy", "copy", 2, sink, 48, "F32", ((src[0], np.uint64(8), "F32", 1.0),)),
        ("max", "max", 2, sink, 56, "I32", [(src[2], 0, "I32", 1.0), (src[3], 0, "I32", 1.0)]),
    ]
    if jobs_in_one_call:
        plan.add_jobs(jobs)
    else:
        for name, op, n, sink, offset, dtype, inputs in jobs:
            plan.add_job(name, _core.JobKind.__members__[op], n, sink, offset, dtype,
                         [_core.Input(*i) for i in inputs])
    assert plan.n_jobs == len(jobs)
    _core.run(plan, threads=1)
    return out


def test_add_jobs_runs_exactly_what_add_job_runs():
    bulk, one_by_one = _run(True), _run(False)
    assert bulk.tobytes() == one_by_one.tobytes()
    assert bulk[56:64].view(np.int32).tolist() == [5, 9]  # the max job ran
    assert bulk[48:56].view(np.float32).tolist() == (np.arange(2, 4, dtype=np.float32) / 3).tolist()


@pytest.mark.parametrize("jobs, error, pattern", [
    ([("w", "sum", 1, 0, 0, "F32")], LadleValueError, r"each job must be a tuple"),
    ([("w", "ties", 1, 0, 0, "F32", [])], LadleValueError, r"unknown job op 'ties'"),
    ([("w", "sum", 1, 0, 0, "F99", [])], LadleValueError, r"unknown dtype 'F99'"),
    ([("w", "sum", 1, 0, 0, "F32", [(0, 0, "F32")])], LadleValueError,
     r"tensor 'w': each input must be a tuple"),
    ([("w", "sum", -1, 0, 0, "F32", [])], OverflowError, None),
    ([("w", "sum", 1, 2**32, 0, "F32", [])], OverflowError, r"out of range"),
    ([("w", "sum", 1.5, 0, 0, "F32", [])], TypeError, None),
    ([(b"w", "sum", 1, 0, 0, "F32", [])], TypeError, None),
    ([("w", "sum", 1, 0, 0, "F32", [(0, 0, "F32", "half")])], TypeError, None),
])
def test_add_jobs_refuses_malformed_jobs(jobs, error, pattern):
    with pytest.raises(error, match=pattern):
        _core.Plan().add_jobs(jobs)


def test_serialize_header_takes_tuples_lists_and_numpy_integers():
    entries = [("a", "F32", (2, np.int64(3)), 0, 24), ("b\u00e9", "I8", [], np.uint8(24), 25)]
    prefix = _core.serialize_header(entries, [("format", "pt")])
    n = int.from_bytes(prefix[:8], "little")
    header = json.loads(prefix[8:8 + n])
    assert header == {"__metadata__": {"format": "pt"},
                      "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                      "b\u00e9": {"dtype": "I8", "shape": [], "data_offsets": [24, 25]}}
    with pytest.raises(LadleValueError, match="each tensor must be a tuple"):
        _core.serialize_header([("a", "F32", [1], 0)], [])
    with pytest.raises(OverflowError):
        _core.serialize_header([("a", "F32", [-1], 0, 4)], [])


def _entries(n: int) -> dict:
    return {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
            for i in range(n)}


def test_streamed_header_checks_duplicates_of_a_large_object():
    # More members than the parser's linear duplicate scan: checked once complete.
    text = json.dumps(_entries(20))[:-1] + ', "t3": ' + json.dumps(_entries(4)["t3"]) + "}"
    with pytest.raises(FormatError, match=r'label: header: invalid JSON at byte \d+: '
                                          r'duplicate key "t3"'):
        _core.parse_header("label", text.encode(), 8 + len(text) + 80)


def test_streamed_header_reports_json_errors_after_valid_entries():
    text = json.dumps(_entries(12))[:-1] + ', "x": [1, }'
    with pytest.raises(FormatError, match=r"label: header: invalid JSON at byte \d+"):
        _core.parse_header("label", text.encode(), 8 + len(text) + 48)
    text = json.dumps(_entries(3))[:-1] + ', "x": {"dtype": "F32"}}'
    with pytest.raises(FormatError, match=r"^label: tensor 'x': missing field 'shape'"):
        _core.parse_header("label", text.encode(), 8 + len(text) + 12)
