"""``ladle verify`` on single-file outputs (their own CRC-32C catches a flipped
bit and swapped tensors), its exit codes (1: data mismatch, 2: cannot verify),
and the inputs that used to end in a traceback (sparse ``.pt`` tensors,
non-UTF-8 file names, crafted metadata): each gives one ``ladle: error:`` line.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ladle
from ladle.engine.verify import verify
from ladle.errors import FormatError

from child_env import child_env


def run_ladle(*args: str | bytes | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = child_env()
    env.pop("LADLE_DEBUG", None)
    argv = [os.fsencode(sys.executable), b"-m", b"ladle", *(os.fsencode(a) for a in args)]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120, check=False)


def assert_cli_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ladle: error: "), err
    assert "Traceback" not in err
    assert pattern in lines[0], (pattern, lines[0])


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    """A single-file merge of two inputs with two same-shape tensors."""
    rng = np.random.default_rng(1)
    inputs = []
    for k in range(2):
        path = tmp_path / f"in{k}.safetensors"
        save_file({"a": rng.standard_normal((8, 8)).astype(np.float32),
                   "b": rng.standard_normal((8, 8)).astype(np.float32),
                   "c": rng.standard_normal(3).astype(np.float32)}, str(path))
        inputs.append(path)
    out = tmp_path / "out.safetensors"
    ladle.merge(inputs, [0.25, 0.75], out, progress=False)
    return out


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _tensor_range(path: Path, name: str) -> tuple[int, int]:
    t = ladle.open(path).tensors[name]
    return t.offset, t.offset + t.n_bytes


# ------------------------------------------------------------ single-file checksum


def test_single_file_output_records_its_checksum_and_stays_plain_safetensors(merged: Path):
    meta = ladle.open(merged).metadata
    assert len(meta["ladle_file_crc32c"]) == 8 and meta["ladle_file_crc32c"] != "00000000"
    assert set(load_file(str(merged))) == {"a", "b", "c"}  # the safetensors library reads it
    report = verify(merged, sample=0)
    assert report.ok and report.checksums_checked == 1


def test_verify_detects_a_flipped_bit_without_inputs(merged: Path):
    data = bytearray(merged.read_bytes())
    lo, hi = _tensor_range(merged, "b")
    data[(lo + hi) // 2] ^= 0x01
    merged.write_bytes(bytes(data))
    proc = run_ladle("verify", merged, "--sample", "0")
    assert proc.returncode == 1, proc.stderr
    assert b"CRC-32C" in proc.stderr and b"Traceback" not in proc.stderr


def test_verify_detects_swapped_tensors(merged: Path):
    """Exchange the bytes of 'a' and 'b' (same shape and dtype): the structure is
    still valid, so only a position-bound checksum or recomputation can tell."""
    data = bytearray(merged.read_bytes())
    (alo, ahi), (blo, bhi) = _tensor_range(merged, "a"), _tensor_range(merged, "b")
    data[alo:ahi], data[blo:bhi] = data[blo:bhi], data[alo:ahi]
    merged.write_bytes(bytes(data))
    assert not verify(merged, sample=0).ok  # the checksum alone
    proc = run_ladle("verify", merged, "--sample", "0")
    assert proc.returncode == 1 and b"CRC-32C" in proc.stderr, proc.stderr
    # --sample -1 recomputes every tensor from the recorded recipe: both swapped
    # tensors differ from their recomputed values.
    report = verify(merged, sample=-1)
    assert report.tensors_recomputed == 3
    assert sum("tensor 'a'" in p or "tensor 'b'" in p for p in report.problems) == 2


def test_verify_detects_swapped_header_entries(merged: Path):
    """Swapping two tensors' offsets in the header (data untouched) is caught too:
    the checksum covers the header."""
    data = merged.read_bytes()
    (alo, ahi), (blo, bhi) = _tensor_range(merged, "a"), _tensor_range(merged, "b")
    start = _data_start(merged)
    a_off = f"[{alo - start},{ahi - start}]".encode()
    b_off = f"[{blo - start},{bhi - start}]".encode()
    swapped = data.replace(a_off, b"@A@").replace(b_off, a_off).replace(b"@A@", b_off)
    assert swapped != data and len(swapped) == len(data)
    merged.write_bytes(swapped)
    assert not verify(merged, sample=0).ok


def test_live_and_method_single_file_outputs_are_checksummed(tmp_path: Path, merged: Path):
    inputs = [tmp_path / "in0.safetensors", tmp_path / "in1.safetensors"]
    live = tmp_path / "live.safetensors"
    ladle.save(load_file(str(inputs[0])), live)
    method = tmp_path / "method.safetensors"
    ladle.methods.methods.merge_models("linear", inputs, method, progress=False,
                               model_parameters=[{"weight": 0.5}] * 2)
    for out in (live, method):
        assert "ladle_file_crc32c" in ladle.open(out).metadata
        assert verify(out, sample=0).checksums_checked == 1


# --------------------------------------------------------- exit codes of verify


@pytest.mark.parametrize("key,value,pattern", [
    ("ladle_inputs", "{not json", "ladle_inputs is not JSON"),
    ("ladle_inputs", "5", "ladle_inputs must be a JSON list of a path"),
    ("ladle_inputs", '["a", 5]', "ladle_inputs must be a JSON list"),
    ("ladle_weights", '[1, "x"]', "ladle_weights must be a JSON list of a finite number"),
    ("ladle_weights", "[1, null]", "ladle_weights must be a JSON list"),
    ("ladle_weights", "[1, 1e999]", "ladle_weights must be a JSON list"),
    ("ladle_weights", "[true, 1]", "ladle_weights must be a JSON list"),
    ("ladle_weights", "[" * 100000, "ladle_weights is not JSON"),
    ("ladle_file_crc32c", "zzzz", "must be 8 lowercase hex digits"),
])
def test_verify_crafted_metadata_cannot_verify(tmp_path: Path, merged: Path, key: str,
                                               value: str, pattern: str):
    src = ladle.open(merged)
    meta = {k: v for k, v in src.metadata.items() if k != "ladle_file_crc32c"}
    meta[key] = value
    crafted = tmp_path / "crafted.safetensors"
    save_file(load_file(str(merged)), str(crafted), metadata=meta)
    assert_cli_error(run_ladle("verify", crafted), pattern)


def test_verify_missing_input_cannot_verify(tmp_path: Path, merged: Path):
    (tmp_path / "in1.safetensors").unlink()
    assert_cli_error(run_ladle("verify", merged), "in1.safetensors")


def test_verify_malformed_index_checksums_cannot_verify(tmp_path: Path):
    rng = np.random.default_rng(2)
    inputs = []
    for k in range(2):
        inputs.append(tmp_path / f"s{k}.safetensors")
        save_file({f"t{i}": rng.standard_normal(16).astype(np.float32) for i in range(3)},
                  str(inputs[-1]))
    out = tmp_path / "sharded"
    ladle.merge(inputs, [0.5, 0.5], out, max_shard_size=64, progress=False)
    index = out / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["metadata"]["ladle_crc32c"] = ["not", "an", "object"]
    index.write_text(json.dumps(data))
    assert_cli_error(run_ladle("verify", out), "ladle_crc32c is not an object")


def test_verify_data_mismatch_is_exit_1(merged: Path, tmp_path: Path):
    proc = run_ladle("verify", merged, "--inputs", tmp_path / "in0.safetensors",
                     tmp_path / "in1.safetensors", "--weights", "0.5", "0.5", "--sample", "-1")
    assert proc.returncode == 1 and b"differs from the value recomputed" in proc.stderr


def test_verify_malformed_output_cannot_verify(tmp_path: Path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"{oops")
    assert_cli_error(run_ladle("verify", bad), "bad.safetensors")
    with pytest.raises(FormatError):
        verify(bad)


# ------------------------------------------------------- tracebacks now errors


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensors_in_pt_inputs(tmp_path: Path, capsys):
    """In-process CLI (torch is slow to import in a child); one subprocess run
    shows the same single line from ``python -m ladle``."""
    torch = pytest.importorskip("torch")
    from ladle.cli.cli import main

    dense = tmp_path / "dense.pt"
    torch.save({"w": torch.ones(4, 4), "b": torch.ones(4)}, dense)
    for layout, make in (("sparse_coo", lambda t: t.to_sparse()),
                         ("sparse_csr", lambda t: t.to_sparse_csr())):
        sparse = tmp_path / f"{layout}.pt"
        torch.save({"w": make(torch.eye(4)), "b": torch.ones(4)}, sparse)
        for args in (["merge", sparse, dense, "--alpha", "0.5", "-o", tmp_path / "out"],
                     ["convert", sparse, "-o", tmp_path / "conv"]):
            rc = main([str(a) for a in args])
            err = capsys.readouterr().err
            assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert err.startswith(f"ladle: error: {sparse}: tensor 'w' is sparse "
                                  f"(torch.{layout})"), err
    proc = run_ladle("merge", tmp_path / "sparse_coo.pt", dense, "--alpha", "0.5", "-o",
                     tmp_path / "out")
    assert_cli_error(proc, "tensor 'w' is sparse (torch.sparse_coo)")
    assert not (tmp_path / "out").exists() and not (tmp_path / "conv").exists()


def test_non_utf8_file_names(tmp_path: Path, merged: Path):
    """Names that are not UTF-8 (surrogate-escaped by Python) work as inputs, as
    outputs (file and directory), for inspect and verify; missing ones are
    reported in one line."""
    odd_in = tmp_path / os.fsdecode(b"in\xff.safetensors")
    odd_in.write_bytes((tmp_path / "in0.safetensors").read_bytes())
    odd_dir = tmp_path / os.fsdecode(b"dir\xfe")
    odd_dir.mkdir()
    (odd_dir / "model.safetensors").write_bytes((tmp_path / "in1.safetensors").read_bytes())
    for out in (b"out\xfe.safetensors", b"outdir\xfe"):
        proc = run_ladle("merge", odd_in, odd_dir, "--alpha", "0.75", "-o", out, "--quiet",
                         cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        proc = run_ladle("verify", out, "--sample", "-1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / os.fsdecode(b"out\xfe.safetensors")).read_bytes() != b""
    sharded = tmp_path / os.fsdecode(b"sharded\xfd")
    proc = run_ladle("merge", odd_in, odd_dir, "--alpha", "0.75", "-o", sharded,
                     "--max-shard-size", "100", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert run_ladle("verify", sharded).returncode == 0
    assert run_ladle("inspect", odd_in).returncode == 0
    assert_cli_error(run_ladle("merge", odd_in, tmp_path / os.fsdecode(b"gone\xff.safetensors"),
                               "--alpha", "0.5", "-o", tmp_path / "x"), "gone")


def test_index_naming_a_non_utf8_shard(tmp_path: Path, merged: Path):
    """index.json may name a shard whose file name is not UTF-8 (escaped as a lone
    surrogate in JSON); raw invalid UTF-8 in index.json is a one-line error."""
    model = tmp_path / "model"
    model.mkdir()
    shard = model / os.fsdecode(b"part\xff.safetensors")
    shard.write_bytes((tmp_path / "in0.safetensors").read_bytes())
    weight_map = {name: shard.name for name in ("a", "b", "c")}
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert run_ladle("inspect", model).returncode == 0
    proc = run_ladle("merge", model, tmp_path / "in1.safetensors", "--alpha", "0.5",
                     "-o", tmp_path / "m.safetensors", "--quiet")
    assert proc.returncode == 0, proc.stderr
    index.write_bytes(b'{"metadata":{},"weight_map":{"a":"part\xff.safetensors"}}')
    assert_cli_error(run_ladle("inspect", model), "index.json")
