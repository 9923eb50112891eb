"""Hugging Face cache snapshots as inputs: ``models--org--name/snapshots/<rev>/``
whose weight files (single, sharded, ``.bin``) and index are links into
``../../blobs/``. Links may resolve inside that model's cache root, nowhere else
(the rule of hf_cache.hf_cache_root, shared with the copied config files)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

import ladle
from ladle.cli.cli import main
from ladle.errors import FormatError

from reference import combine
from st_io import read_checkpoint, write_raw

TENSORS = {"embed.weight": [3, 4], "layers.0.w": [5], "layers.1.w": [2, 3], "lm_head.weight": [4]}
SHARDS = {"embed.weight": 1, "layers.0.w": 1, "layers.1.w": 2, "lm_head.weight": 2}


def _values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in TENSORS.items()}


def _blob(blobs: Path, data: bytes | None = None, write=None) -> str:
    """Store a file in ``blobs/`` under a content hash, as huggingface_hub does."""
    tmp = blobs / "incoming"
    if write is not None:
        write(tmp)
    else:
        tmp.write_bytes(data)
    name = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blobs / name)
    return name


def _save(values: dict[str, np.ndarray], torch_format: bool):
    def write(path: Path) -> None:
        if torch_format:
            import torch

            torch.save({n: torch.from_numpy(v) for n, v in values.items()}, path)
        else:
            write_raw(path, {n: ("F32", list(v.shape), v.tobytes()) for n, v in values.items()})
    return write


def _snapshot(hub: Path, layout: str, values: dict[str, np.ndarray]) -> Path:
    """A cache snapshot of ``values`` in ``layout`` (single, sharded, bin, bin-sharded)."""
    root = hub / "models--org--name"
    blobs, snap = root / "blobs", root / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    torch_format = layout.startswith("bin")
    if torch_format:
        pytest.importorskip("torch")
    files = {}  # snapshot name -> blob name
    if layout in ("single", "bin"):
        name = "pytorch_model.bin" if torch_format else "model.safetensors"
        files[name] = _blob(blobs, write=_save(values, torch_format))
    else:
        stem, ext, index = (("pytorch_model", "bin", "pytorch_model.bin.index.json")
                            if torch_format else ("model", "safetensors",
                                                  "model.safetensors.index.json"))
        weight_map = {n: f"{stem}-0000{k}-of-00002.{ext}" for n, k in SHARDS.items()}
        for shard in dict.fromkeys(weight_map.values()):
            part = {n: v for n, v in values.items() if weight_map[n] == shard}
            files[shard] = _blob(blobs, write=_save(part, torch_format))
        files[index] = _blob(blobs, json.dumps({"metadata": {}, "weight_map": weight_map})
                             .encode())
    files["config.json"] = _blob(blobs, b'{"model_type": "toy"}')
    for name, blob in files.items():
        (snap / name).symlink_to(f"../../blobs/{blob}")
    return snap


def _plain(path: Path, values: dict[str, np.ndarray]) -> Path:
    return write_raw(path, {n: ("F32", list(v.shape), v.tobytes()) for n, v in values.items()})


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin-sharded"])
def test_snapshot_of_links_into_blobs_merges_bit_exactly(tmp_path: Path, layout: str):
    snap = _snapshot(tmp_path / "hub", layout, _values(1))
    other = _plain(tmp_path / "other.safetensors", _values(2))
    plain = _plain(tmp_path / "plain.safetensors", _values(1))
    out = tmp_path / "out"
    assert main(["merge", str(snap), str(other), "--weights", "0.3", "0.7", "-o", str(out),
                 "--quiet"]) == 0
    ladle.merge([plain, other], [0.3, 0.7], tmp_path / "want", progress=False)
    got, want = read_checkpoint(out), read_checkpoint(tmp_path / "want")
    a, b = read_checkpoint(plain), read_checkpoint(other)
    assert set(got) == set(TENSORS)
    for name, (dtype, shape, raw) in got.items():
        assert (dtype, shape, raw) == want[name], name
        assert raw == combine([a[name][2], b[name][2]], ["F32", "F32"], [0.3, 0.7], "F32"), name
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'  # copied, not linked
    assert not (out / "config.json").is_symlink()
    assert main(["verify", str(out)]) == 0


def _escaping_link(tmp_path: Path, layout: str, target: str) -> tuple[Path, Path]:
    """A snapshot one of whose weight files links to ``target`` (relative to the hub):
    a secret file beside the model's cache root, or another model's blob."""
    hub = tmp_path / "hub"
    snap = _snapshot(hub, layout, _values(1))
    secret = hub / target
    secret.parent.mkdir(parents=True, exist_ok=True)
    if layout.startswith("bin"):
        _save(_values(1), True)(secret)
    else:
        _plain(secret, _values(1))
    victim = next(p for p in sorted(snap.iterdir())
                  if p.name.endswith((".safetensors", ".bin")))
    victim.unlink()
    victim.symlink_to(secret)
    return snap, victim


ESCAPES = ["secret.safetensors", "models--other--model/blobs/beef"]


@pytest.mark.parametrize("target", ESCAPES)
@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin-sharded"])
def test_snapshot_link_leaving_the_cache_root_is_refused(tmp_path: Path, capsys, layout: str,
                                                         target: str):
    snap, victim = _escaping_link(tmp_path, layout, target)
    root = snap.parent.parent.resolve()
    secret = (tmp_path / "hub" / target).resolve()
    with pytest.raises(FormatError) as info:
        ladle.open(snap)
    message = str(info.value)
    assert f"resolves to {secret}, outside the model's Hugging Face cache root {root}" in message
    assert victim.name in message
    other = _plain(tmp_path / "other.safetensors", _values(2))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", str(snap), str(other), "--alpha", "0.5", "-o", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"ladle: error: .*outside the model's Hugging Face cache root .*\n",
                        err), err
    assert not out.exists()


def test_plain_directory_weight_link_leaving_it_is_refused(tmp_path: Path):
    """The same rule outside the cache: a directory's weight file must resolve inside it."""
    elsewhere = _plain(tmp_path / "elsewhere.safetensors", _values(1))
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(FormatError, match=re.escape(
            f"{d / 'model.safetensors'}: weight file links outside its checkpoint directory "
            f"{d}: it resolves to {elsewhere.resolve()}, outside the directory")):
        ladle.open(d)
    inside = tmp_path / "inside"
    (inside / "weights").mkdir(parents=True)
    _plain(inside / "weights" / "real", _values(1))
    (inside / "model.safetensors").symlink_to("weights/real")  # stays inside: read
    assert set(ladle.open(inside).tensors) == set(TENSORS)
