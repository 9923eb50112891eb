"""Block-scaled FP8 checkpoints (DeepSeek-V3 layout): ``W`` F8_E4M3 [R, C] with
``W_scale_inv`` F32 [ceil(R/128), ceil(C/128)] are dequantized tile by tile in the
engine's weighted sum, merged in fp32 and written as BF16 without the scales,
bit for bit against a numpy reference that dequantizes whole tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleValueError
from ladle.methods.methods import ties

from reference import combine, fp8_encode, from_f32, random_raw, to_f32
from st_io import read_checkpoint, write_raw

BLOCK = 128
# R, C not multiples of 128; 200 x 300 spans several engine chunks and tiles mid-row.
SCALED = {"model.layers.0.mlp.down_proj.weight": (200, 300),
          "model.layers.0.self_attn.q_proj.weight": (130, 129)}
PLAIN = {"model.norm.weight": [300], "model.embed_tokens.weight": [50, 16]}
QUANT = {"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK], "fmt": "e4m3",
         "activation_scheme": "dynamic"}


def _grid(shape: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(shape[0] / BLOCK), math.ceil(shape[1] / BLOCK)


def deepseek_tensors(seed: int) -> dict[str, tuple[str, list[int], bytes]]:
    """FP8 weights with their F32 block scales, and BF16 tensors without scales."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in SCALED.items():
        codes = fp8_encode(rng.standard_normal(shape) * 100, "F8_E4M3").astype(np.uint8)
        scales = rng.uniform(1e-4, 2e-2, _grid(shape)).astype(np.float32)
        out[name] = ("F8_E4M3", list(shape), codes.tobytes())
        out[name + "_scale_inv"] = ("F32", list(scales.shape), scales.tobytes())
    for name, shape in PLAIN.items():
        out[name] = ("BF16", shape, random_raw(rng, math.prod(shape), "BF16"))
    return out


def deepseek_checkpoint(directory: Path, seed: int, sharded: bool = False) -> Path:
    """A DeepSeek-style directory; ``sharded`` puts a weight and its scale in different
    shards (the engine then reads the scale from another file)."""
    directory.mkdir()
    tensors = deepseek_tensors(seed)
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "deepseek_v3", "hidden_size": 300, "quantization_config": QUANT}))
    if not sharded:
        write_raw(directory / "model.safetensors", tensors)
        return directory
    names = list(tensors)
    parts = {"model-00001-of-00002.safetensors": names[0::2],
             "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in parts.items():
        write_raw(directory / file, {n: tensors[n] for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, part in parts.items() for n in part}}))
    return directory


def dequantized(tensors: dict, name: str) -> bytes:
    """fp32(fp32(W) * scale_inv[r // 128, c // 128]) of a whole tensor, in numpy."""
    _, shape, raw = tensors[name]
    _, grid, scale_raw = tensors[name + "_scale_inv"]
    scales = np.frombuffer(scale_raw, np.float32).reshape(grid)
    full = np.repeat(np.repeat(scales, BLOCK, 0), BLOCK, 1)[:shape[0], :shape[1]]
    return (to_f32(raw, "F8_E4M3").reshape(shape) * full).astype(np.float32).tobytes()


def expected(inputs: list[dict], weights: list[float], out_dtype: str = "BF16") -> dict:
    """name -> (dtype, shape, bytes) of the merge, from the numpy reference."""
    want = {}
    for name, shape in SCALED.items():
        raws = [dequantized(t, name) for t in inputs]
        want[name] = (out_dtype, list(shape), combine(raws, ["F32"] * len(raws), weights,
                                                      out_dtype))
    for name, shape in PLAIN.items():
        want[name] = ("BF16", shape, combine([t[name][2] for t in inputs],
                                             ["BF16"] * len(inputs), weights, "BF16"))
    return want


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("memory_budget", [1, "64KiB", "1GiB"])
def test_block_scaled_merge_matches_the_numpy_reference(tmp_path, threads, memory_budget):
    a = deepseek_checkpoint(tmp_path / "a", 1, sharded=True)
    b = deepseek_checkpoint(tmp_path / "b", 2)
    out = tmp_path / "out"
    ladle.merge([a, b], [0.3, 0.7], out, threads=threads, memory_budget=memory_budget,
                progress=False)
    assert read_checkpoint(out) == expected([deepseek_tensors(1), deepseek_tensors(2)],
                                            [0.3, 0.7])


def test_cli_writes_bf16_without_scales_or_quantization_config(tmp_path, capsys):
    a, b = deepseek_checkpoint(tmp_path / "a", 1), deepseek_checkpoint(tmp_path / "b", 2)
    out = tmp_path / "out"
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    assert sorted(got) == sorted([*SCALED, *PLAIN])  # no *_scale_inv
    assert {got[n][0] for n in SCALED} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config == {"model_type": "deepseek_v3", "hidden_size": 300}
    assert "quantization_config" in json.loads((a / "config.json").read_text())  # input intact
    assert main(["verify", str(out), "--sample", "-1"]) == 0
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "f32"),
                 "--dtype", "f32", "--quiet"]) == 0
    want = expected([deepseek_tensors(1), deepseek_tensors(2)], [0.5, 0.5], "F32")
    got = read_checkpoint(tmp_path / "f32")
    assert all(got[n] == want[n] for n in SCALED)
    capsys.readouterr()
    assert main(["check", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "2 tensor(s) F8_E4M3 (block-scaled, dequantized) -> BF16" in text
    assert "FP8 scale pairs: 2" in text and text.rstrip().endswith("ok")


def test_endpoints_with_a_dequantized_bf16_model(tmp_path):
    """FP8 + scales merged with a BF16 model of the same names: α = 0 is the
    dequantized FP8 model rounded to BF16, α = 1 the BF16 model, bit for bit."""
    a = deepseek_checkpoint(tmp_path / "a", 1)
    ta = deepseek_tensors(1)
    rng = np.random.default_rng(5)
    plain = {n: ("BF16", list(s), random_raw(rng, math.prod(s), "BF16"))
             for n, s in SCALED.items()}
    plain |= {n: ta[n] for n in PLAIN}
    b = write_raw(tmp_path / "b.safetensors", plain)
    for alpha, want in [(0.0, {n: from_f32(np.frombuffer(dequantized(ta, n), np.float32), "BF16")
                               for n in SCALED}),
                        (1.0, {n: plain[n][2] for n in SCALED})]:
        out = tmp_path / f"out{alpha}.safetensors"
        ladle.interpolate(a, b, alpha, out, progress=False)
        got = read_checkpoint(out)
        assert {n: got[n][2] for n in SCALED} == want, alpha


def test_refused_layouts_and_dtypes(tmp_path, capsys):
    a, b = deepseek_checkpoint(tmp_path / "a", 1), deepseek_checkpoint(tmp_path / "b", 2)
    name = next(iter(SCALED))
    capsys.readouterr()
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "o"),
                 "--dtype", "f8_e4m3"]) == 2
    err = capsys.readouterr().err
    assert f"tensor '{name}' is block-scaled FP8 and cannot be written as F8_E4M3" in err
    assert "requantizing to FP8" in err and err.count("\n") == 1
    with pytest.raises(LadleValueError, match="not by method 'ties'"):
        ties(a, [b], tmp_path / "t", weights=[1.0], progress=False)
    tensors = deepseek_tensors(3)
    per_channel = {name: tensors[name], name + "_scale": ("F32", [SCALED[name][0]],
                                                          np.ones(SCALED[name][0], np.float32)
                                                          .tobytes())}
    c = write_raw(tmp_path / "c.safetensors", per_channel)
    with pytest.raises(LadleValueError, match="per-tensor/per-channel scale .*compressed-tensors"):
        ladle.merge([c, c], [0.5, 0.5], tmp_path / "c_out.safetensors", progress=False)
    wrong = dict(tensors)
    wrong[name + "_scale_inv"] = ("F32", [1, 1], np.ones(1, np.float32).tobytes())
    d = write_raw(tmp_path / "d.safetensors", wrong)
    with pytest.raises(LadleValueError,
                       match=r"not a block scale of .*128x128 blocks need F32\[2, 3\]"):
        ladle.merge([d, d], [0.5, 0.5], tmp_path / "d_out.safetensors", progress=False)
    assert not any(p.name.endswith("_out.safetensors") for p in tmp_path.iterdir())
