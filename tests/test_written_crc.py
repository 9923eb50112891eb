"""Shard checksums joined from the writes (csrc/shard_writer.cc): the CRC-32C a
writer records for a finished shard must equal the CRC of the file on disk, for
any order and size of writes, without the file being read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

import ladle
from ladle import _core
from ladle.engine import output
from ladle.engine.verify import verify


@given(st.binary(max_size=40_000), st.data())
def test_combine_equals_crc_of_concatenation(data: bytes, draw) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    head, tail = data[:cut], data[cut:]
    assert _core.crc32c_combine(_core.crc32c(head), _core.crc32c(tail), len(tail)) == \
        _core.crc32c(data)


def test_known_check_value() -> None:
    assert _core.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    long = bytes(range(256)) * 997  # long enough for the three-stream path
    assert _core.crc32c(long) == _core.crc32c(long[5000:], _core.crc32c(long[:5000]))


def _inputs(tmp_path, n_models: int = 2) -> list:
    """Many tensors of odd sizes (tiny ones continue a range, big ones are chunked)."""
    rng = np.random.default_rng(7)
    sizes = [1, 3, 17, 4099, 70_001, 5, 300_000, 2, 65_536, 129]
    paths = []
    for m in range(n_models):
        tensors = {f"t{i:02d}": rng.standard_normal(n).astype(np.float32)
                   for i, n in enumerate(sizes * 3)}
        paths.append(tmp_path / f"m{m}.safetensors")
        save_file(tensors, paths[-1])
    return paths


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_recorded_shard_crcs_match_the_files(tmp_path, monkeypatch, method) -> None:
    """Sharded outputs written by two threads in small chunks: every shard's
    recorded CRC is the file's, and no shard is read back to get it."""
    paths = _inputs(tmp_path, 3)
    read_back = []
    real = output.file_crc32c
    monkeypatch.setattr(output, "file_crc32c", lambda p: read_back.append(p) or real(p))
    out = tmp_path / "out"
    options = {"max_shard_size": "1MB", "threads": 2, "progress": False,
               "memory_budget": "1MiB"}
    if method == "linear":
        ladle.merge(paths, [0.5, 0.25, 0.25], out, **options)
    else:
        ladle.methods.merge_models("ties", paths[1:], out, base_model=paths[0],
                                   parameters={"density": 0.5, "weight": 1.0}, chunk_elems=4096, **options)
    assert read_back == []
    index = json.loads((out / "model.safetensors.index.json").read_text())
    recorded = index["metadata"]["ladle_crc32c"]
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 3 and set(recorded) == {s.name for s in shards}
    for shard in shards:
        assert recorded[shard.name] == f"{_core.file_crc32c(str(shard)):08x}"


def test_single_file_self_checksum(tmp_path) -> None:
    """A single-file output's ladle_file_crc32c (now joined from the writes) verifies."""
    paths = _inputs(tmp_path)
    out = tmp_path / "out.safetensors"
    ladle.merge(paths, [0.7, 0.3], out, threads=2, memory_budget="1MiB", progress=False)
    report = verify(out, sample=0)
    assert report.ok and report.checksums_checked == 1, report.problems
    assert "ladle_file_crc32c" in ladle.open(out).metadata
