"""compressed-tensors FP8 checkpoints (Qwen3/RedHat ``float-quantized``): ``W``
F8_E4M3 with a ``W_scale`` (a scale, not an inverse) per tensor, per output
channel or per block, read from config.json's ``quantization_config``; dequantized
in the engine and merged bit for bit against a numpy reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleValueError

from reference import combine, fp8_encode, random_raw, to_f32
from st_io import read_checkpoint, write_raw

SHAPE = (70, 150)  # rows/cols not multiples of the 64x64 blocks below
BLOCK = (64, 64)
SCALE_SHAPES = {"tensor": [1], "channel": [SHAPE[0], 1],
                "block": [math.ceil(SHAPE[0] / BLOCK[0]), math.ceil(SHAPE[1] / BLOCK[1])]}


def quant_config(strategy: str) -> dict:
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
               "strategy": strategy}
    if strategy == "block":
        weights["block_structure"] = list(BLOCK)
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
            "ignore": ["lm_head"]}


def compressed_tensors(seed: int, strategy: str) -> dict:
    rng = np.random.default_rng(seed)
    codes = fp8_encode(rng.standard_normal(SHAPE) * 50, "F8_E4M3").astype(np.uint8)
    scale = rng.uniform(1e-3, 1e-1, SCALE_SHAPES[strategy]).astype(np.float32)
    return {"layer.weight": ("F8_E4M3", list(SHAPE), codes.tobytes()),
            "layer.weight_scale": ("F32", SCALE_SHAPES[strategy], scale.tobytes()),
            "norm.weight": ("BF16", [SHAPE[1]], random_raw(rng, SHAPE[1], "BF16"))}


def compressed_checkpoint(directory: Path, seed: int, strategy: str,
                          config: dict | None = None) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "qwen3", "quantization_config": config or quant_config(strategy)}))
    write_raw(directory / "model.safetensors", compressed_tensors(seed, strategy))
    return directory


def dequantized(tensors: dict, strategy: str) -> bytes:
    """fp32(fp32(W) * scale) with the scale broadcast over its tensor/row/block."""
    _, shape, raw = tensors["layer.weight"]
    _, scale_shape, scale_raw = tensors["layer.weight_scale"]
    scale = np.frombuffer(scale_raw, np.float32).reshape(scale_shape)
    if strategy == "block":
        scale = np.repeat(np.repeat(scale, BLOCK[0], 0), BLOCK[1], 1)[:shape[0], :shape[1]]
    full = np.broadcast_to(scale.reshape(scale.shape if strategy != "tensor" else (1, 1)), shape)
    return (to_f32(raw, "F8_E4M3").reshape(shape) * full).astype(np.float32).tobytes()


@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_compressed_tensors_strategies_match_numpy(tmp_path, strategy):
    a = compressed_checkpoint(tmp_path / "a", 1, strategy)
    b = compressed_checkpoint(tmp_path / "b", 2, strategy)
    out = tmp_path / "out"
    ladle.merge([a, b], [0.4, 0.6], out, memory_budget=1, progress=False)
    got = read_checkpoint(out)
    inputs = [compressed_tensors(1, strategy), compressed_tensors(2, strategy)]
    raws = [dequantized(t, strategy) for t in inputs]
    assert sorted(got) == ["layer.weight", "norm.weight"]  # scales applied, not written
    assert got["layer.weight"] == ("BF16", list(SHAPE),
                                   combine(raws, ["F32", "F32"], [0.4, 0.6], "BF16"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert main(["verify", str(out), "--sample", "-1"]) == 0


def test_unknown_strategies_and_formats_are_refused(tmp_path):
    config = quant_config("channel")
    config["config_groups"]["group_0"]["weights"]["strategy"] = "group"
    a = compressed_checkpoint(tmp_path / "a", 1, "channel", config)
    with pytest.raises(LadleValueError, match=r"/a: quantization_config weight strategy "
                                              r"'group' is not merged \(known: tensor, "
                                              r"channel, block\)"):
        ladle.merge([a, a], [0.5, 0.5], tmp_path / "o", progress=False)
    config = quant_config("channel") | {"format": "int-quantized"}
    b = compressed_checkpoint(tmp_path / "b", 1, "channel", config)
    with pytest.raises(LadleValueError, match="format 'int-quantized' of compressed-tensors"):
        ladle.merge([b, b], [0.5, 0.5], tmp_path / "o", progress=False)
    wrong = compressed_tensors(1, "channel")
    wrong["layer.weight_scale"] = ("F32", [SHAPE[0] + 1, 1],
                                   np.ones(SHAPE[0] + 1, np.float32).tobytes())
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"quantization_config": quant_config("channel")}))
    write_raw(d / "model.safetensors", wrong)
    with pytest.raises(LadleValueError, match=r"'layer.weight_scale' \(F32\[71, 1\]\) is not a "
                                              r"channel scale of 'layer.weight'"):
        ladle.merge([d, d], [0.5, 0.5], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
