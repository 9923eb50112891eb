"""PyTorch inputs on the streaming path: HF ``pytorch_model.bin`` directories (single
and sharded with ``pytorch_model.bin.index.json``) merge, resume, verify and copy
config.json like safetensors; index entries written as ``./shard`` are accepted;
whole-module pickles are refused unless trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ladle
from ladle.cli.cli import main
from ladle.errors import FormatError

from reference import combine
from st_io import read_checkpoint, write_raw

torch = pytest.importorskip("torch")


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"emb.weight": torch.randn(50, 8, generator=g).to(torch.bfloat16),
            "l0.weight": torch.randn(8, 8, generator=g), "l0.bias": torch.randn(8, generator=g),
            "head.weight": torch.randn(3, 8, generator=g).half(),
            "ids": torch.arange(5)}


def _hf_bin_dir(path, state: dict, n_shards: int):
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "toy"}')
    if n_shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return path
    names = list(state)
    weight_map = {}
    for i in range(n_shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {n: state[n] for n in names[i::n_shards]}
        torch.save(part, path / shard)
        weight_map |= {n: f"./{shard}" if i == 0 else shard for n in part}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def _raw(t) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 \
        else t.numpy().tobytes()


def test_bin_dirs_stream_verify_and_copy_config(tmp_path):
    a, b = _state(0), _state(1)
    da = _hf_bin_dir(tmp_path / "a", a, 3)
    db = _hf_bin_dir(tmp_path / "b", b, 1)
    out = tmp_path / "out"
    assert main(["merge", str(da), str(db), "--alpha", "0.25", "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out / "model.safetensors")
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'
    assert not (out / "pytorch_model.bin.index.json").exists()
    dt = {"emb.weight": "BF16", "l0.weight": "F32", "l0.bias": "F32", "head.weight": "F16"}
    for name, dtype in dt.items():
        assert got[name][2] == combine([_raw(a[name]), _raw(b[name])], [dtype] * 2,
                                       [0.75, 0.25], dtype), name
    assert got["ids"][2] == a["ids"].numpy().tobytes()
    assert main(["verify", str(out)]) == 0  # recomputed from the .bin inputs
    meta = ladle.open(out).metadata
    assert json.loads(meta["ladle_inputs"]) == [str(da), str(db)]


def test_resume_with_bin_inputs(tmp_path, monkeypatch):
    from test_crash_safety import interrupt_after

    from ladle.engine.output import MANIFEST_NAME, OutputDir

    da = _hf_bin_dir(tmp_path / "a", _state(0), 2)
    db = _hf_bin_dir(tmp_path / "b", _state(1), 2)
    whole = tmp_path / "whole"
    ladle.merge([da, db], [0.5, 0.5], whole, progress=False, max_shard_size=500)
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        ladle.merge([da, db], [0.5, 0.5], out, progress=False, max_shard_size=500)
    monkeypatch.undo()
    kept = json.loads((tmp_path / "out.ladle-partial" / MANIFEST_NAME).read_text())
    assert len(kept["shards"]) == 1
    rewritten = []
    real = OutputDir.record_shard
    monkeypatch.setattr(OutputDir, "record_shard",
                        lambda self, f, crc=None: (rewritten.append(f), real(self, f, crc))[1])
    ladle.merge([da, db], [0.5, 0.5], out, progress=False, max_shard_size=500, resume=True)
    assert not set(rewritten) & set(kept["shards"])  # the finished shard was kept
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())
    for f in whole.glob("*.safetensors"):
        assert read_checkpoint(out / f.name) == read_checkpoint(f)


def test_dot_slash_safetensors_index(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    write_raw(d / "s1.safetensors", {"w": ("F32", [2], np.ones(2, np.float32).tobytes())})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "./s1.safetensors"}}))
    assert list(ladle.open(d).tensors) == ["w"]


class Whole(torch.nn.Module):  # a module pickled whole, as the wise-ft repo does
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)


def test_whole_module_pickle_refused_unless_trusted(tmp_path, capsys):
    torch.manual_seed(0)
    m = Whole()
    torch.save(m, tmp_path / "model.pt")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(tmp_path / "model.pt"), str(tmp_path / "sd.pt"), "--alpha", "0.5",
                 "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pickled Python object" in err and "--trust-pickle" in err and "safetensors" in err
    assert not out.exists()
    with pytest.raises(FormatError, match="refused"):
        ladle.merge([tmp_path / "model.pt"], [1.0], out, progress=False)
    with pytest.warns(UserWarning, match="runs its code"):
        ladle.merge([tmp_path / "model.pt", tmp_path / "sd.pt"], [0.5, 0.5], out,
                    progress=False, trust_pickle=True)
    assert read_checkpoint(out)["lin.weight"][2] == m.lin.weight.detach().numpy().tobytes()
