"""Minimal raw safetensors reader/writer for tests, independent of ladle, so
tests can build any dtype (BF16 included) and inspect outputs byte by byte."""

from __future__ import annotations

import json
import struct
from pathlib import Path

ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
        "U8": 1, "BOOL": 1}


def write_raw(path: str | Path, tensors: dict[str, tuple[str, list[int], bytes]],
              metadata: dict[str, str] | None = None) -> Path:
    """Write tensors given as name -> (dtype, shape, raw bytes)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, raw in tensors.values():
            f.write(raw)
    return path


def read_raw(path: str | Path) -> tuple[dict[str, tuple[str, list[int], bytes]], dict]:
    """Read every tensor of one file as name -> (dtype, shape, raw bytes)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {})
    out = {}
    for name, entry in header.items():
        b, e = entry["data_offsets"]
        out[name] = (entry["dtype"], entry["shape"], data[8 + n + b:8 + n + e])
    return out, metadata


def read_checkpoint(path: str | Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Read a file or an HF-layout directory (with or without index.json)."""
    path = Path(path)
    if path.is_file():
        return read_raw(path)[0]
    out: dict = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(read_raw(file)[0])
    return out


def write_sharded(directory: str | Path, tensors: dict[str, tuple[str, list[int], bytes]],
                  n_shards: int) -> Path:
    """Write tensors as an HF sharded checkpoint with model.safetensors.index.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map = {}
    per = max(1, -(-len(names) // n_shards))
    groups = [names[i:i + per] for i in range(0, len(names), per)]
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_raw(directory / fname, {n: tensors[n] for n in group})
        weight_map.update({n: fname for n in group})
    total = sum(len(t[2]) for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return directory


def write_old_ladle_output(dest: Path, marker: bytes = b"previous") -> bytes:
    """Make ``dest`` a directory ladle wrote earlier (``ladle_*`` metadata in its
    model.safetensors; ``--overwrite`` replaces only those) holding ``marker``;
    returns the bytes of its model.safetensors."""
    dest.mkdir()
    path = write_raw(dest / "model.safetensors", {"old": ("U8", [len(marker)], marker)},
                     {"ladle_method": "old"})
    return path.read_bytes()
