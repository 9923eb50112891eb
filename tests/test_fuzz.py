"""Property-based fuzzing of the Python-visible parsing surface (CI-bounded):
``_core.parse_header`` on arbitrary and mutated headers, and ``ladle.open`` on
arbitrary index.json contents. Anything but a ladle error (a crash, a plain
ValueError/KeyError/RecursionError) fails. The coverage-guided libFuzzer run
on the C++ parser is ``make fuzz``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import ladle
from ladle import _core
from ladle.errors import LadleError

SEED = (b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],'
        b'"data_offsets":[0,24]},"b":{"dtype":"I64","shape":[1],"data_offsets":[24,32]}}')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                               max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_parse_header_random_bytes(data: bytes, file_n_bytes: int):
    try:
        _core.parse_header("fuzz", data, file_n_bytes)
    except LadleError:
        pass


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, 64))
def test_parse_header_mutated_seed(edits: list[tuple[int, int]], extra: int):
    data = bytearray(SEED)
    for pos, byte in edits:
        data[pos] = byte
    try:
        h = _core.parse_header("fuzz", bytes(data), 8 + len(data) + 32 + extra)
    except LadleError:
        return
    assert h["data_start"] == 8 + len(data)


@settings(max_examples=40)
@given(json_values)
def test_parse_header_random_json(value):
    try:
        _core.parse_header("fuzz", json.dumps(value).encode(), 10**6)
    except (LadleError, ValueError):  # json.dumps of NaN gives invalid JSON text: Format
        pass


@settings(max_examples=40)
@given(st.one_of(json_values, st.dictionaries(st.just("weight_map"), json_values)))
def test_open_random_index(tmp_path_factory, value):
    d = tmp_path_factory.mktemp("idx")
    save_file({"w": np.ones(2, np.float32)}, str(d / "model-1.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(value))
    try:
        ckpt = ladle.open(d)
    except LadleError:
        return
    assert set(ckpt.tensors) <= {"w"}


def test_regression_files_parse_or_refuse_cleanly():
    """Every crash the fuzzers found is kept under tests/data/fuzz/regressions."""
    root = Path(__file__).parent / "data" / "fuzz"
    for path in sorted((root / "regressions").glob("*")) + sorted((root / "seeds").glob("*")):
        data = path.read_bytes()
        if len(data) < 8:
            continue
        n = struct.unpack("<Q", data[:8])[0]
        try:
            _core.parse_header(str(path), data[8:8 + min(n, len(data))], len(data))
        except LadleError:
            pass


def test_file_size_below_header_is_refused():
    """Regression: parse_header with a file size smaller than 8 + N used to wrap."""
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    try:
        _core.parse_header("small", header, 3)
    except ladle.FormatError as e:
        assert "exceeds the file size 3" in str(e)
    else:
        raise AssertionError("accepted")
