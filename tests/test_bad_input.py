"""Bad input never crashes ladle and never leaves output behind.

Every malformed file, inconsistent set of inputs, bad argument or failing disk
must raise a ladle exception whose message names the file, the tensor and the
offending numbers, and must leave neither the destination nor its
``.ladle-partial`` directory behind.

Malformed files are written byte by byte with :func:`write_raw`; valid inputs
with ``safetensors.numpy.save_file``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ladle
from ladle import _core
from ladle.errors import (
    FormatError,
    LadleIOError,
    LadleValueError,
    MismatchError,
    NonFiniteError,
)

from st_io import write_old_ladle_output

PARTIAL = ".ladle-partial"
INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------- helpers


def write_raw(path: Path, header: bytes | str | dict, data: bytes = b"",
              length: int | None = None) -> Path:
    """Write a safetensors-like file: 8-byte little-endian length, header bytes, data.

    Args:
        path: file to write.
        header: raw header bytes, a str (UTF-8 encoded) or a dict (JSON encoded).
        data: bytes of the data buffer.
        length: header length to claim (default: the true length).

    Returns:
        ``path``.
    """
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def assert_no_output(out: Path) -> None:
    """Neither the destination nor its partial directory exists."""
    partial = out.with_name(out.name + PARTIAL)
    assert not out.exists(), f"{out} was left behind"
    assert not partial.exists(), f"{partial} was left behind"


def assert_mentions(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in message {message!r}"


def merge_quiet(inputs, weights, out, **options) -> ladle.MergeReport:
    options.setdefault("progress", False)
    return ladle.merge(inputs, weights, out, **options)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid single-file checkpoint with the tensor 'w' (F32 [2, 3])."""
    path = tmp_path / "good.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path))
    return path


@pytest.fixture
def no_fault():
    """Guarantee the ENOSPC test hook is disarmed before and after a test."""
    _core._set_enospc_fault_after(0)
    try:
        yield _core._set_enospc_fault_after
    finally:
        _core._set_enospc_fault_after(0)


W24 = entry("F32", [2, 3], 0, 24)  # a correct entry for 24 bytes of data
DATA24 = np.arange(6, dtype=np.float32).tobytes()


# ------------------------------------------------------------- malformed files
# (id, header, data, claimed length or None, exception class, regexes that must
# all appear in the message besides the file name)

MALFORMED = [
    ("empty-file", None, b"", None, FormatError,
     [r"truncated: 0 bytes, too short for the 8-byte header length"]),
    ("shorter-than-8-bytes", None, b"\x10\x00\x00", None, FormatError,
     [r"truncated: 3 bytes, too short for the 8-byte header length"]),
    ("data-cut-short", {"w": W24}, DATA24[:20], None, FormatError,
     [r"tensor 'w'", r"data_offsets \[0, 24\) exceed the data buffer of 20 bytes"]),
    ("header-length-beyond-file", b'{"w":', b"", 1000, FormatError,
     [r"header length 1000 exceeds the file size 13"]),
    ("header-length-2**40", b"", b"", 2**40, FormatError,
     [r"header length 1099511627776 exceeds the 100 MB limit"]),
    ("header-length-100MB+1", b"", b"", 100_000_001, FormatError,
     [r"header length 100000001 exceeds the 100 MB limit"]),
    ("utf8-bad-lead-byte", b'{"w\xff":{}}', b"", None, FormatError,
     [r"invalid JSON at byte 3", r"invalid UTF-8 lead byte"]),
    ("utf8-overlong", b'{"w\xc0\xaf":{}}', b"", None, FormatError,
     [r"invalid JSON at byte 3", r"overlong UTF-8"]),
    ("utf8-surrogate", b'{"w\xed\xa0\x80":{}}', b"", None, FormatError,
     [r"invalid JSON at byte 3", r"invalid UTF-8 code point"]),
    ("utf8-truncated", b'{"w\xe2\x82', b"", None, FormatError,
     [r"invalid JSON at byte \d+", r"UTF-8"]),
    ("json-trailing-comma", b'{"w":{"dtype":"F32",}}', b"", None, FormatError,
     [r"invalid JSON at byte 20", r"expected a string key"]),
    ("json-unterminated", b'{"w":{"dtype":"F32"', b"", None, FormatError,
     [r"invalid JSON at byte 19", r"expected ',' or '}'"]),
    ("json-trailing-garbage", b'{}{}', b"", None, FormatError,
     [r"invalid JSON at byte 2", r"trailing characters"]),
    ("json-leading-zero", b'{"w":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}', b"",
     None, FormatError, [r"invalid JSON at byte 29", r"leading zero"]),
    ("not-starting-with-brace-array", b'[{"w":1}]', b"", None, FormatError,
     [r"header does not start with '\{'"]),
    ("not-starting-with-brace-space", b' {}', b"", None, FormatError,
     [r"header does not start with '\{'"]),
    ("empty-header", b'', b"", None, FormatError,
     [r"header does not start with '\{'"]),
    ("unknown-dtype", {"w": entry("F128", [2, 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"unknown dtype 'F128'"]),
    ("dtype-not-a-string", {"w": entry(4, [2, 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"dtype is a JSON number, expected a string"]),
    ("offsets-overlap", {"a": W24, "b": entry("F32", [6], 16, 40)}, bytes(40), None,
     FormatError,
     [r"tensor 'b'", r"data_offsets \[16, 40\) overlap the previous tensor ending at 24"]),
    ("offsets-hole", {"a": W24, "b": entry("F32", [6], 32, 56)}, bytes(56), None, FormatError,
     [r"tensor 'b'", r"data_offsets \[32, 56\) leave a hole after byte 24"]),
    ("offsets-hole-at-start", {"w": entry("F32", [2, 3], 8, 32)}, bytes(32), None,
     FormatError, [r"tensor 'w'", r"data_offsets \[8, 32\) leave a hole after byte 0"]),
    ("trailing-bytes", {"w": W24}, DATA24 + bytes(6), None, FormatError,
     [r"tensors cover 24 bytes but the data buffer holds 30"]),
    ("offsets-out-of-range", {"a": W24, "b": entry("F32", [6], 24, 48)}, bytes(40), None,
     FormatError, [r"tensor 'b'", r"data_offsets \[24, 48\) exceed the data buffer of 40 bytes"]),
    ("offsets-end-before-begin", {"w": entry("F32", [0], 24, 0)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"data_offsets \[24, 0\) end before they begin"]),
    ("offsets-three-entries", {"w": {"dtype": "F32", "shape": [2, 3],
                                     "data_offsets": [0, 24, 48]}}, DATA24, None, FormatError,
     [r"tensor 'w'", r"data_offsets must be \[BEGIN, END\]"]),
    ("offsets-negative", {"w": entry("F32", [2, 3], -24, 0)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"data_offsets entry '-24' is not a non-negative 64-bit integer"]),
    ("size-not-numel-times-itemsize", {"w": entry("F32", [2, 3], 0, 20)}, bytes(20), None,
     FormatError, [r"tensor 'w'", r"data_offsets \[0, 20\) hold 20 bytes but F32 shape needs 24"]),
    ("size-bf16", {"w": entry("BF16", [2, 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"hold 24 bytes but BF16 shape needs 12"]),
    ("shape-product-overflow", {"w": entry("F32", [2**32, 2**32], 0, 0)}, b"", None,
     FormatError, [r"tensor 'w'", r"shape product overflows 64 bits"]),
    ("byte-size-overflow", {"w": entry("F32", [2**61], 0, 0)}, b"", None, FormatError,
     [r"tensor 'w'", r"byte size of 2305843009213693952 F32 elements overflows 64 bits"]),
    ("shape-2**64", {"w": entry("F32", [2**64], 0, 0)}, b"", None, FormatError,
     [r"tensor 'w'", r"shape entry '18446744073709551616' is not a non-negative 64-bit"]),
    ("shape-negative", {"w": entry("F32", [-2, 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"shape entry '-2' is not a non-negative 64-bit integer"]),
    ("shape-float", {"w": entry("F32", [2.0, 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"shape entry '2\.0' is not a non-negative 64-bit integer"]),
    ("shape-exponent", b'{"w":{"dtype":"F32","shape":[2e0,3],"data_offsets":[0,24]}}', DATA24,
     None, FormatError, [r"tensor 'w'", r"shape entry '2e0' is not a non-negative"]),
    ("shape-string", {"w": entry("F32", ["2", 3], 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"shape entry 'string' is not a non-negative 64-bit integer"]),
    ("shape-not-array", {"w": entry("F32", 6, 0, 24)}, DATA24, None, FormatError,
     [r"tensor 'w'", r"shape is a JSON number, expected an array"]),
    ("duplicate-tensor-key",
     (b'{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},'
      b'"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}'), DATA24, None, FormatError,
     [r"invalid JSON at byte \d+", r'duplicate key "w"']),
    ("duplicate-field-key",
     b'{"w":{"dtype":"F32","dtype":"F16","shape":[2,3],"data_offsets":[0,24]}}', DATA24, None,
     FormatError, [r'duplicate key "dtype"']),
    ("duplicate-metadata-key", b'{"__metadata__":{"k":"a","k":"b"}}', b"", None, FormatError,
     [r'duplicate key "k"']),
    ("metadata-number-value", {"__metadata__": {"step": 3}, "w": W24}, DATA24, None,
     FormatError, [r"__metadata__ value of 'step' is a JSON number, expected a string"]),
    ("metadata-nested-value", {"__metadata__": {"cfg": {"a": "b"}}, "w": W24}, DATA24, None,
     FormatError, [r"__metadata__ value of 'cfg' is a JSON object, expected a string"]),
    ("metadata-not-object", {"__metadata__": ["a"], "w": W24}, DATA24, None, FormatError,
     [r"__metadata__ is a JSON array, expected an object of strings"]),
    ("deeply-nested-arrays", b'{"w":' + b"[" * 10000, b"", None, FormatError,
     [r"invalid JSON at byte \d+", r"nesting deeper than \d+ levels"]),
    ("deeply-nested-objects", b'{"a":' * 10000, b"", None, FormatError,
     [r"invalid JSON at byte \d+", r"nesting deeper than \d+ levels"]),
    ("tensor-entry-not-object", {"w": [1, 2]}, b"", None, FormatError,
     [r"tensor 'w'", r"entry is a JSON array, expected an object"]),
    ("tensor-unknown-field", {"w": {**W24, "extra": 1}}, DATA24, None, FormatError,
     [r"tensor 'w'", r"unknown field 'extra'"]),
    ("tensor-missing-field", {"w": {"dtype": "F32", "shape": [2, 3]}}, DATA24, None,
     FormatError, [r"tensor 'w'", r"missing field 'data_offsets'"]),
]


def _write_case(path: Path, header, data: bytes, length: int | None) -> Path:
    if header is None:  # not even a length prefix
        path.write_bytes(data)
        return path
    return write_raw(path, header, data, length)


@pytest.mark.parametrize(("header", "data", "length", "exc", "patterns"),
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED])
def test_malformed_file(tmp_path: Path, good: Path, header, data, length, exc, patterns):
    bad = _write_case(tmp_path / "bad.safetensors", header, data, length)
    file_re = re.escape(str(bad))

    with pytest.raises(exc, match=file_re) as info:
        ladle.open(bad)
    assert_mentions(str(info.value), *patterns)

    out = tmp_path / "out"
    with pytest.raises(exc, match=file_re):
        merge_quiet([good, bad], [0.5, 0.5], out)
    assert_no_output(out)
    with pytest.raises(exc, match=file_re):
        ladle.interpolate(bad, good, 0.3, out, progress=False)
    assert_no_output(out)
    single = tmp_path / "out.safetensors"
    with pytest.raises(exc, match=file_re):
        ladle.soup([good, bad], single, progress=False)
    assert_no_output(single)


def test_valid_handwritten_file_is_accepted(tmp_path: Path, good: Path):
    """The helper itself writes readable files: space padding and metadata are fine."""
    header = json.dumps({"__metadata__": {"k": "v"}, "w": W24}) + "   "
    path = write_raw(tmp_path / "ok.safetensors", header, DATA24)
    ckpt = ladle.open(path)
    assert ckpt.metadata == {"k": "v"}
    assert ckpt.tensors["w"].shape == (2, 3)
    out = tmp_path / "out.safetensors"
    merge_quiet([good, path], [0.5, 0.5], out)
    np.testing.assert_array_equal(load_file(str(out))["w"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_shape_overflow_message_names_the_numbers(tmp_path: Path):
    bad = write_raw(tmp_path / "bad.safetensors", {"w": entry("F32", [2**32, 2**32], 0, 0)})
    with pytest.raises(FormatError, match="overflows 64 bits") as info:
        ladle.open(bad)
    assert_mentions(str(info.value), "4294967296")


def test_missing_input_path(tmp_path: Path, good: Path):
    missing = tmp_path / "nope.safetensors"
    out = tmp_path / "out"
    with pytest.raises(LadleIOError, match=re.escape(f"{missing}: no such file")) as info:
        merge_quiet([good, missing], [0.5, 0.5], out)
    assert info.value.errno == 2
    assert_no_output(out)


# ------------------------------------------------------ inputs that disagree


def _save(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_missing_tensors_are_listed(tmp_path: Path):
    a = _save(tmp_path / "a.safetensors", {n: np.zeros(2, np.float32)
                                           for n in ["w", "b1", "b2", "c"]})
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros(2, np.float32)})
    out = tmp_path / "out"
    with pytest.raises(MismatchError,
                       match=re.escape(f"{b}: missing 3 tensor(s) of {a}: 'b1', 'b2', 'c'")):
        merge_quiet([a, b], [0.5, 0.5], out)
    assert_no_output(out)


def test_many_missing_tensors_are_previewed(tmp_path: Path):
    names = [f"layer.{i:02d}" for i in range(12)]
    a = _save(tmp_path / "a.safetensors", {n: np.zeros(1, np.float32) for n in names})
    b = _save(tmp_path / "b.safetensors", {names[0]: np.zeros(1, np.float32)})
    out = tmp_path / "out"
    with pytest.raises(MismatchError, match=r"missing 11 tensor\(s\) .*'layer\.01'.*"
                       r"'layer\.08', \.\.\. \(3 more\)"):
        ladle.soup([a, b], out, progress=False)
    assert_no_output(out)


def test_extra_tensors_are_listed(tmp_path: Path):
    a = _save(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32)})
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros(2, np.float32),
                                           "x": np.zeros(2, np.float32)})
    out = tmp_path / "out"
    with pytest.raises(MismatchError,
                       match=re.escape(f"{b}: 1 extra tensor(s) not in {a}: 'x'")):
        ladle.interpolate(a, b, 0.5, out, progress=False)
    assert_no_output(out)


def test_missing_and_extra_tensors_together(tmp_path: Path):
    a = _save(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32),
                                           "y": np.zeros(2, np.float32)})
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros(2, np.float32),
                                           "x": np.zeros(2, np.float32)})
    with pytest.raises(MismatchError, match=r"missing 1 tensor\(s\) of .*: 'y'; "
                       r"1 extra tensor\(s\) not in .*: 'x'"):
        merge_quiet([a, b], [1.0, 1.0], tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_shape_mismatch(tmp_path: Path):
    a = _save(tmp_path / "a.safetensors", {"w": np.zeros((2, 3), np.float32)})
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros((3, 2), np.float32)})
    out = tmp_path / "out"
    with pytest.raises(MismatchError, match=re.escape(
            f"tensor 'w': shape [3, 2] in {b} differs from [2, 3] in {a}")):
        merge_quiet([a, b], [0.5, 0.5], out)
    assert_no_output(out)


def test_dtype_mismatch(tmp_path: Path):
    # F16 with F32 merges since issue 15 (tests/test_mixed_dtypes.py); float with
    # integer still differs.
    a = _save(tmp_path / "a.safetensors", {"w": np.zeros((2, 3), np.float32)})
    c = _save(tmp_path / "c.safetensors", {"w": np.zeros((2, 3), np.int32)})
    out = tmp_path / "out"
    with pytest.raises(MismatchError, match=re.escape(
            f"tensor 'w': dtype I32 in {c} differs from F32 in {a}")):
        ladle.soup([a, c], out, progress=False)
    assert_no_output(out)


def test_integer_tensors_that_differ(tmp_path: Path):
    step = np.arange(100, dtype=np.int64)
    other = step.copy()
    other[37] = -1
    a = _save(tmp_path / "a.safetensors", {"w": np.ones(4, np.float32), "step": step})
    b = _save(tmp_path / "b.safetensors", {"w": np.ones(4, np.float32), "step": other})
    for out in (tmp_path / "out", tmp_path / "out.safetensors"):
        with pytest.raises(MismatchError, match=re.escape(
                f"tensor 'step' (I64) differs between {a} and {b} at element 37")):
            merge_quiet([a, b], [0.5, 0.5], out, int_policy="error")
        assert_no_output(out)


def test_integer_difference_found_in_a_later_chunk(tmp_path: Path):
    """The element index is absolute, not relative to the chunk that found it."""
    ids = np.arange(200_000, dtype=np.int32)
    other = ids.copy()
    other[150_001] = 7
    a = _save(tmp_path / "a.safetensors", {"ids": ids})
    b = _save(tmp_path / "b.safetensors", {"ids": other})
    out = tmp_path / "out"
    with pytest.raises(MismatchError, match=r"tensor 'ids' \(I32\) differs .* at element 150001"):
        merge_quiet([a, b], [0.5, 0.5], out, threads=2, memory_budget="64KiB",
                    int_policy="error")
    assert_no_output(out)


def test_identical_integer_tensors_pass_through(tmp_path: Path):
    step = np.array([3, -5, 2**40], dtype=np.int64)
    mask = np.array([True, False, True])
    a = _save(tmp_path / "a.safetensors", {"w": np.full(4, 1.0, np.float32), "step": step,
                                           "mask": mask, "u8": np.arange(5, dtype=np.uint8)})
    b = _save(tmp_path / "b.safetensors", {"w": np.full(4, 3.0, np.float32), "step": step,
                                           "mask": mask, "u8": np.arange(5, dtype=np.uint8)})
    out = tmp_path / "out.safetensors"
    merge_quiet([a, b], [0.25, 0.75], out, dtype="f16")
    got = load_file(str(out))
    np.testing.assert_array_equal(got["step"], step)
    assert got["step"].dtype == np.int64
    np.testing.assert_array_equal(got["mask"], mask)
    np.testing.assert_array_equal(got["u8"], np.arange(5, dtype=np.uint8))
    assert got["w"].dtype == np.float16
    np.testing.assert_array_equal(got["w"], np.full(4, 2.5, np.float16))


# ----------------------------------------------------------- HF sharded inputs


def _sharded(directory: Path, shards: dict[str, dict[str, np.ndarray]],
             weight_map: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, tensors in shards.items():
        save_file(tensors, str(directory / name))
    if weight_map is None:
        weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    (directory / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def _two_shards(directory: Path, weight_map: dict[str, str] | None = None) -> Path:
    return _sharded(directory, {S1: {"a": np.zeros(2, np.float32)},
                                S2: {"b": np.zeros(2, np.float32)}}, weight_map)


def _check_bad_checkpoint(ckpt: Path, tmp_path: Path, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        ladle.open(ckpt)
    out = tmp_path / "merged"
    with pytest.raises(exc, match=pattern):
        merge_quiet([ckpt, ckpt], [0.5, 0.5], out)
    assert_no_output(out)


def test_sharded_input_that_is_valid(tmp_path: Path):
    ckpt = ladle.open(_two_shards(tmp_path / "m"))
    assert sorted(ckpt.tensors) == ["a", "b"]
    assert [f.name for f in ckpt.files] == [S1, S2]


def test_index_points_at_missing_shard(tmp_path: Path):
    m = _two_shards(tmp_path / "m")
    (m / S2).unlink()
    with pytest.raises(LadleIOError) as info:
        ladle.open(m)
    assert info.value.errno == 2
    _check_bad_checkpoint(m, tmp_path, LadleIOError,
                          re.escape(f"{m / INDEX}: shard '{S2}' is missing"))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_index_path_escaping_the_directory(tmp_path: Path, kind: str):
    outside = _save(tmp_path / "outside.safetensors", {"b": np.zeros(2, np.float32)})
    m = _sharded(tmp_path / "m", {S1: {"a": np.zeros(2, np.float32)}})
    if kind == "dotdot":
        target = "../outside.safetensors"
    elif kind == "absolute":
        target = str(outside)
    else:
        (m / "link.safetensors").symlink_to(outside)
        target = "link.safetensors"
    (m / INDEX).write_text(json.dumps({"weight_map": {"a": S1, "b": target}}))
    _check_bad_checkpoint(m, tmp_path, FormatError,
                          re.escape(f"{m / INDEX}: shard path {target!r} escapes the "
                                    f"checkpoint directory {m}"))


def test_index_lists_tensor_absent_from_its_shard(tmp_path: Path):
    m = _two_shards(tmp_path / "m", {"a": S1, "b": S2, "ghost": S1, "ghost2": S2})
    _check_bad_checkpoint(m, tmp_path, FormatError, re.escape(
        f"{m / INDEX}: 2 tensor(s) listed in the index are absent from their shards: "
        f"'ghost', 'ghost2'"))


def test_shard_holds_tensor_not_listed_for_it(tmp_path: Path):
    m = _two_shards(tmp_path / "m", {"a": S2, "b": S1})  # swapped
    _check_bad_checkpoint(m, tmp_path, FormatError, re.escape(
        f"{m / S2}: tensor 'b' is not listed for this shard in {INDEX} (index says '{S1}')"))


def test_tensor_in_two_shards(tmp_path: Path):
    m = _sharded(tmp_path / "m", {S1: {"a": np.zeros(2, np.float32)},
                                  S2: {"a": np.zeros(2, np.float32)}}, {"a": S1, "x": S2})
    _check_bad_checkpoint(m, tmp_path, FormatError,
                          re.escape(f"{m / S2}: tensor 'a' also appears in {m / S1}"))


@pytest.mark.parametrize(("text", "pattern"), [
    ("{not json", r"not valid JSON"),
    ('{"weight_map": ["a"]}', r"'weight_map' must map tensor names to shard file names"),
    ('{"weight_map": {"a": 3}}', r"'weight_map' must map tensor names to shard file names"),
    ('[1, 2]', r"'weight_map' must map tensor names to shard file names"),
])
def test_index_malformed(tmp_path: Path, text: str, pattern: str):
    m = _two_shards(tmp_path / "m")
    (m / INDEX).write_text(text)
    _check_bad_checkpoint(m, tmp_path, FormatError, re.escape(str(m / INDEX)) + ": " + pattern)


def test_index_with_shard_in_subdirectory(tmp_path: Path):
    m = tmp_path / "m"
    (m / "sub").mkdir(parents=True)
    save_file({"a": np.zeros(2, np.float32)}, str(m / "sub" / "s.safetensors"))
    (m / INDEX).write_text(json.dumps({"weight_map": {"a": "sub/s.safetensors"}}))
    assert list(ladle.open(m).tensors) == ["a"]


@pytest.mark.parametrize("n_files", [0, 2])
def test_directory_without_index(tmp_path: Path, n_files: int):
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    for i in range(n_files):
        _save(m / f"part{i}.safetensors", {f"t{i}": np.zeros(2, np.float32)})
    _check_bad_checkpoint(m, tmp_path, FormatError, re.escape(
        f"{m}: expected {INDEX} or exactly one .safetensors file, found {n_files} "
        f".safetensors files"))


# --------------------------------------------------------------- destination


def _pair(tmp_path: Path, step_b: int = 1) -> tuple[Path, Path]:
    a = _save(tmp_path / "a.safetensors", {"w": np.full(4, 1.0, np.float32),
                                           "step": np.array([1], np.int64)})
    b = _save(tmp_path / "b.safetensors", {"w": np.full(4, 3.0, np.float32),
                                           "step": np.array([step_b], np.int64)})
    return a, b


def make_old_destination(dest: Path, file_name: str) -> None:
    """An existing destination: a file holding b"old", or a directory ladle wrote
    (--overwrite replaces only those, issue 14) with one more file."""
    if dest.suffix:
        dest.write_bytes(b"old")
    else:
        write_old_ladle_output(dest, b"old")
        (dest / file_name).write_text("old")


def assert_old_destination(dest: Path) -> None:
    """``dest`` is still what make_old_destination(dest, "keep.txt") made."""
    if dest.suffix:
        assert dest.read_bytes() == b"old"
    else:
        assert sorted(p.name for p in dest.iterdir()) == ["keep.txt", "model.safetensors"]
        assert (dest / "keep.txt").read_text() == "old"
        assert load_file(str(dest / "model.safetensors"))["old"].tobytes() == b"old"


@pytest.mark.parametrize("dest_name", ["out", "out.safetensors"])
def test_destination_exists_is_refused(tmp_path: Path, dest_name: str):
    a, b = _pair(tmp_path)
    dest = tmp_path / dest_name
    make_old_destination(dest, "keep.txt")
    with pytest.raises(LadleValueError, match=re.escape(f"{dest}: destination exists")):
        merge_quiet([a, b], [0.5, 0.5], dest)
    with pytest.raises(LadleValueError, match="destination exists"):
        merge_quiet([a, b], [0.5, 0.5], dest, dry_run=True)
    assert_old_destination(dest)
    assert not dest.with_name(dest.name + PARTIAL).exists()


@pytest.mark.parametrize("dest_name", ["out", "out.safetensors"])
def test_overwrite_replaces_destination(tmp_path: Path, dest_name: str):
    a, b = _pair(tmp_path)
    dest = tmp_path / dest_name
    make_old_destination(dest, "stale.txt")
    report = merge_quiet([a, b], [0.5, 0.5], dest, overwrite=True)
    assert report.out == dest
    file = dest if dest.suffix else dest / "model.safetensors"
    if not dest.suffix:
        assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors"]
    np.testing.assert_array_equal(load_file(str(file))["w"], np.full(4, 2.0, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors",
                                                                 "b.safetensors", dest_name])


@pytest.mark.parametrize("dest_name", ["out", "out.safetensors"])
def test_failed_overwrite_keeps_old_destination(tmp_path: Path, dest_name: str):
    a, b = _pair(tmp_path, step_b=2)  # 'step' differs: the engine fails mid-run
    dest = tmp_path / dest_name
    make_old_destination(dest, "keep.txt")
    with pytest.raises(MismatchError, match=r"tensor 'step' \(I64\) differs .* at element 0"):
        merge_quiet([a, b], [0.5, 0.5], dest, overwrite=True, int_policy="error")
    assert_old_destination(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors",
                                                                 "b.safetensors", dest_name])


def test_destination_of_the_other_kind(tmp_path: Path):
    a, b = _pair(tmp_path)
    dest = tmp_path / "out.safetensors"
    dest.mkdir()
    with pytest.raises(LadleValueError, match=re.escape(
            f"{dest}: destination is an existing directory; cannot replace it")):
        merge_quiet([a, b], [0.5, 0.5], dest, overwrite=True)
    assert dest.is_dir() and not any(dest.iterdir())


def test_missing_parent_directory(tmp_path: Path):
    a, b = _pair(tmp_path)
    dest = tmp_path / "no" / "such" / "out.safetensors"
    with pytest.raises(LadleIOError, match=re.escape(f"{dest.parent}: parent directory")):
        merge_quiet([a, b], [0.5, 0.5], dest)
    assert not (tmp_path / "no").exists()


# Only a partial directory that is recognisably ladle's is removed (issue 14):
# one holding ladle's manifest cut short by a crash, or only the manifest's
# temporary file (SIGKILL between mkdir and the first manifest's rename).
@pytest.mark.parametrize("left", [
    {"model.safetensors": b"junk from a crashed run",
     ".ladle-manifest.json": b'{"version": 1, "pla'},
    {".ladle-manifest.json.tmp": b'{"vers'},
], ids=["cut-manifest", "manifest-tmp-only"])
def test_stale_partial_directory_is_replaced(tmp_path: Path, left: dict[str, bytes]):
    a, b = _pair(tmp_path)
    dest = tmp_path / "out"
    stale = tmp_path / ("out" + PARTIAL)
    stale.mkdir()
    for name, data in left.items():
        (stale / name).write_bytes(data)
    merge_quiet([a, b], [0.5, 0.5], dest)
    assert not stale.exists()
    np.testing.assert_array_equal(load_file(str(dest / "model.safetensors"))["w"],
                                  np.full(4, 2.0, np.float32))


# ------------------------------------------------------------------- weights


def test_weight_count_differs_from_input_count(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match=re.escape("got 1 weight(s) for 2 input(s)")):
        merge_quiet([a, b], [1.0], out)
    with pytest.raises(LadleValueError, match=re.escape("got 3 weight(s) for 2 input(s)")):
        ladle.soup([a, b], out, weights=[1.0, 2.0, 3.0], progress=False)
    assert_no_output(out)


@pytest.mark.parametrize(("weights", "shown"), [
    ([float("nan"), 0.5], r"\[nan, 0\.5\]"),
    ([0.5, float("inf")], r"\[0\.5, inf\]"),
    ([float("-inf"), 1.0], r"\[-inf, 1\.0\]"),
])
def test_non_finite_weight(tmp_path: Path, weights: list[float], shown: str):
    a, b = _pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match=r"weights must be finite in fp32 \(\|w\| < 3\.4e38\), got " + shown):
        merge_quiet([a, b], weights, out)
    with pytest.raises(LadleValueError, match=r"weights must be finite in fp32 \(\|w\| < 3\.4e38\), got " + shown):
        ladle.soup([a, b], out, weights=weights, progress=False)
    assert_no_output(out)


def test_non_finite_alpha(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match="alpha must not be NaN"):
        ladle.interpolate(a, b, float("nan"), out, progress=False)
    with pytest.raises(LadleValueError, match=r"weights must be finite in fp32 \(\|w\| < 3\.4e38\), got \[-inf, inf\]"):
        ladle.interpolate(a, b, float("inf"), out, progress=False)
    assert_no_output(out)


def test_soup_weights_summing_to_zero(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match=re.escape("soup weights sum to zero: [1.0, -1.0]")):
        ladle.soup([a, b], out, weights=[1.0, -1.0], progress=False)
    with pytest.raises(LadleValueError, match=re.escape("soup weights sum to zero: [0.0, 0.0]")):
        ladle.soup([a, b], out, weights=[0.0, 0.0], progress=False)
    assert_no_output(out)


def test_no_inputs(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match="no input checkpoints given"):
        merge_quiet([], [], out)
    with pytest.raises(LadleValueError, match="no input checkpoints given"):
        ladle.soup([], out, progress=False)
    assert_no_output(out)


def test_weight_beyond_fp32_range(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out.safetensors"
    try:
        merge_quiet([a, b], [1e39, 0.0], out)
    except LadleValueError as e:
        assert "1e+39" in str(e)
        assert_no_output(out)
        return
    assert np.isfinite(load_file(str(out))["w"]).all(), "merge wrote non-finite values"


def test_soup_weights_whose_sum_overflows(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out.safetensors"
    try:
        ladle.soup([a, b], out, weights=[1e308, 1e308], progress=False)
    except LadleValueError:
        assert_no_output(out)
        return
    np.testing.assert_array_equal(load_file(str(out))["w"], np.full(4, 2.0, np.float32))


# ----------------------------------------------------------------- disk full


def _big_pair(tmp_path: Path, n: int = 50_000) -> tuple[Path, Path]:
    a = _save(tmp_path / "a.safetensors", {"w": np.ones(n, np.float32)})
    b = _save(tmp_path / "b.safetensors", {"w": np.full(n, 3.0, np.float32)})
    return a, b


@pytest.mark.parametrize("dest_name", ["out", "out.safetensors"])
def test_disk_full_fault_at_preallocation(tmp_path: Path, no_fault, dest_name: str):
    a, b = _big_pair(tmp_path)
    out = tmp_path / dest_name
    partial = out.with_name(out.name + PARTIAL)
    n_bytes = merge_quiet([a, b], [0.5, 0.5], out, dry_run=True).plan.shards[0].n_bytes
    assert n_bytes > 200_000
    no_fault(1000)
    with pytest.raises(LadleIOError, match=re.escape(
            f"{partial}/model.safetensors: disk full (No space left on device) "
            f"writing {n_bytes} bytes at offset 0")) as info:
        merge_quiet([a, b], [0.5, 0.5], out)
    assert info.value.errno == 28
    assert_no_output(out)


def test_disk_full_fault_during_data_writes(tmp_path: Path, no_fault):
    a, b = _big_pair(tmp_path)
    out = tmp_path / "out"
    plan = merge_quiet([a, b], [0.5, 0.5], out, dry_run=True).plan
    shard = plan.shards[0]
    header_n_bytes = len(shard.header)
    # Preallocation and the header fit; the first data chunk does not.
    no_fault(shard.n_bytes + header_n_bytes + 100)
    with pytest.raises(LadleIOError, match=r"disk full \(No space left on device\)") as info:
        merge_quiet([a, b], [0.5, 0.5], out, threads=1, memory_budget="64KiB")
    assert info.value.errno == 28
    assert_mentions(str(info.value), r"model\.safetensors: disk full",
                    rf"bytes at offset {header_n_bytes}\b")
    assert_no_output(out)


def test_disk_full_fault_on_second_shard(tmp_path: Path, no_fault):
    names = ["t0", "t1", "t2"]
    a = _save(tmp_path / "a.safetensors", {n: np.ones(1000, np.float32) for n in names})
    b = _save(tmp_path / "b.safetensors", {n: np.ones(1000, np.float32) for n in names})
    out = tmp_path / "out"
    plan = merge_quiet([a, b], [0.5, 0.5], out, max_shard_size=5000, dry_run=True).plan
    assert len(plan.shards) == 3
    no_fault(plan.shards[0].n_bytes + len(plan.shards[0].header))
    with pytest.raises(LadleIOError, match=re.escape(
            f"model-00002-of-00003.safetensors: disk full (No space left on device) "
            f"writing {plan.shards[1].n_bytes} bytes at offset 0")):
        merge_quiet([a, b], [0.5, 0.5], out, max_shard_size=5000)
    assert_no_output(out)
    no_fault(0)
    merge_quiet([a, b], [0.5, 0.5], out, max_shard_size=5000)  # works once disarmed
    assert len(list(out.glob("model-*-of-00003.safetensors"))) == 3


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs mounted inside tmp_path (skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                            check=False, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): "
                    f"{result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_enospc_on_tiny_tmpfs(tmp_path: Path, tiny_tmpfs: Path, no_fault):
    a, b = _big_pair(tmp_path, n=300_000)  # 1.2 MB output on a 1 MiB file system
    for name in ("out", "out.safetensors"):
        out = tiny_tmpfs / name
        with pytest.raises(LadleIOError, match=r"disk full \(No space left on device\) "
                           r"writing \d+ bytes at offset \d+") as info:
            merge_quiet([a, b], [0.5, 0.5], out)
        assert info.value.errno == 28
        assert_mentions(str(info.value), re.escape(f"{out}{PARTIAL}/model.safetensors"))
        assert list(tiny_tmpfs.iterdir()) == []
    # A merge that fits still works on the same file system.
    small = tmp_path / "small"
    small.mkdir()
    small_a, small_b = _big_pair(small, n=1000)
    merge_quiet([small_a, small_b], [0.5, 0.5], tiny_tmpfs / "ok.safetensors")
    np.testing.assert_array_equal(load_file(str(tiny_tmpfs / "ok.safetensors"))["w"],
                                  np.full(1000, 2.0, np.float32))


def test_real_enospc_while_copying_config(tmp_path: Path, tiny_tmpfs: Path):
    model = tmp_path / "model"
    model.mkdir()
    _save(model / "model.safetensors", {"w": np.ones(255_000, np.float32)})  # fits
    (model / "config.json").write_text("x" * 65536)  # does not fit beside it
    out = tiny_tmpfs / "out"
    try:
        with pytest.raises(LadleIOError, match="disk full"):
            merge_quiet([model, model], [0.5, 0.5], out)
    finally:
        assert list(tiny_tmpfs.iterdir()) == []


# ---------------------------------------------------------------- non-finite


def _nan_pair(tmp_path: Path, where: int, n: int = 64) -> tuple[Path, Path]:
    w = np.linspace(-1, 1, n, dtype=np.float32)
    bad = w.copy()
    bad[where] = np.nan
    a = _save(tmp_path / "a.safetensors", {"ok": np.ones(3, np.float32), "w": w})
    b = _save(tmp_path / "b.safetensors", {"ok": np.ones(3, np.float32), "w": bad})
    return a, b


@pytest.mark.parametrize("dest_name", ["out", "out.safetensors"])
def test_check_finite_reports_nan(tmp_path: Path, dest_name: str):
    a, b = _nan_pair(tmp_path, where=5)
    out = tmp_path / dest_name
    with pytest.raises(NonFiniteError, match=re.escape(
            f"{b}: tensor 'w': non-finite value (NaN or Inf) at element 5")):
        merge_quiet([a, b], [0.5, 0.5], out, check_finite=True)
    assert_no_output(out)


def test_check_finite_reports_inf_in_a_later_chunk(tmp_path: Path):
    w = np.zeros(100_000, np.float16)
    bad = w.copy()
    bad[77_777] = -np.inf
    a = _save(tmp_path / "a.safetensors", {"w": bad})
    b = _save(tmp_path / "b.safetensors", {"w": w})
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match=re.escape(
            f"{a}: tensor 'w': non-finite value (NaN or Inf) at element 77777")):
        merge_quiet([a, b], [0.5, 0.5], out, check_finite=True, memory_budget="64KiB")
    assert_no_output(out)


def test_check_finite_reports_overflow_in_the_output(tmp_path: Path):
    big = np.full(8, 60000.0, np.float16)
    a = _save(tmp_path / "a.safetensors", {"w": big})
    b = _save(tmp_path / "b.safetensors", {"w": big})
    out = tmp_path / "out.safetensors"
    with pytest.raises(NonFiniteError, match=r"tensor 'w': merged value at element 0 is not "
                       r"finite \(overflow in F16\)"):
        merge_quiet([a, b], [1.0, 1.0], out, check_finite=True)
    assert_no_output(out)


def test_nan_passes_through_without_check_finite(tmp_path: Path):
    a, b = _nan_pair(tmp_path, where=5)
    out = tmp_path / "out.safetensors"
    merge_quiet([a, b], [0.5, 0.5], out)
    w = load_file(str(out))["w"]
    assert np.isnan(w[5])
    assert np.isfinite(np.delete(w, 5)).all()
    expected = np.linspace(-1, 1, 64, dtype=np.float32)
    np.testing.assert_allclose(np.delete(w, 5), np.delete(expected, 5), rtol=1e-6, atol=1e-7)


def test_check_finite_accepts_finite_inputs(tmp_path: Path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out.safetensors"
    merge_quiet([a, b], [0.5, 0.5], out, check_finite=True)
    np.testing.assert_array_equal(load_file(str(out))["w"], np.full(4, 2.0, np.float32))


def test_fault_hook_reset_restores_writes(tmp_path: Path, no_fault):
    """After a faulted run and a reset, merges write normally (the hook is process-wide)."""
    a, b = _big_pair(tmp_path)
    no_fault(10)
    with pytest.raises(LadleIOError, match="disk full"):
        merge_quiet([a, b], [0.5, 0.5], tmp_path / "x")
    no_fault(0)
    merge_quiet([a, b], [0.5, 0.5], tmp_path / "x")
    assert (tmp_path / "x" / "model.safetensors").is_file()
    assert os.path.getsize(tmp_path / "x" / "model.safetensors") > 200_000
