"""``--dtype fp8``: block-scaled FP8 merges written back as F8_E4M3 with fresh
128x128 block scales in the input's layout (same names, ``*_scale_inv`` shapes,
config.json unchanged), bit for bit against torch's ``(x / s).to(float8_e4m3fn)``
with ``s = amax(block) / 448`` computed in the test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_fp8_blocks import BLOCK, PLAIN, SCALED, deepseek_checkpoint, deepseek_tensors, dequantized

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleError, LadleValueError

from reference import combine, to_f32
from st_io import read_checkpoint, write_raw


def torch_requantized(merged: np.ndarray) -> tuple[bytes, bytes]:
    """(F8_E4M3 codes, F32 scale_inv) of an fp32 [R, C] tensor, in torch: per
    128x128 block s = amax / 448 (1 where that is 0), q = (x / s).to(float8_e4m3fn)."""
    x = torch.from_numpy(np.array(merged, np.float32))  # a writable copy
    rows, cols = x.shape
    grid = (math.ceil(rows / BLOCK), math.ceil(cols / BLOCK))
    padded = torch.zeros(grid[0] * BLOCK, grid[1] * BLOCK)
    padded[:rows, :cols] = x
    amax = padded.abs().reshape(grid[0], BLOCK, grid[1], BLOCK).amax(dim=(1, 3))
    s = amax / 448.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    full = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
    q = (x / full).to(torch.float8_e4m3fn)
    return q.view(torch.uint8).numpy().tobytes(), s.numpy().tobytes()


def merged_f32(inputs: list[dict], weights: list[float], name: str) -> np.ndarray:
    raws = [dequantized(t, name) for t in inputs]
    return to_f32(combine(raws, ["F32"] * len(raws), weights, "F32"), "F32").reshape(SCALED[name])


@pytest.mark.parametrize("threads,memory_budget", [(1, 1), (2, "64KiB"), (2, "1GiB")])
def test_fp8_output_matches_torch_and_keeps_the_layout(tmp_path, threads, memory_budget):
    a = deepseek_checkpoint(tmp_path / "a", 1, sharded=True)
    b = deepseek_checkpoint(tmp_path / "b", 2)
    config_before = (b / "config.json").read_bytes()
    out = tmp_path / "out"
    ladle.merge([a, b], [0.3, 0.7], out, dtype="fp8", threads=threads,
                memory_budget=memory_budget, progress=False)
    got = read_checkpoint(out)
    inputs = [deepseek_tensors(1), deepseek_tensors(2)]
    assert sorted(got) == sorted(inputs[0])  # same names, scales included
    for name in SCALED:
        codes, scales = torch_requantized(merged_f32(inputs, [0.3, 0.7], name))
        assert got[name] == ("F8_E4M3", list(SCALED[name]), codes), name
        grid = inputs[0][name + "_scale_inv"][1]
        assert got[name + "_scale_inv"] == ("F32", grid, scales), name
    for name in PLAIN:  # not quantized: the widest input dtype, as without --dtype
        assert got[name][0] == "BF16"
    assert json.loads((out / "config.json").read_text()) == json.loads(config_before)
    assert (b / "config.json").read_bytes() == config_before


@pytest.mark.parametrize("kernel", ["scalar", "avx2"])
@pytest.mark.parametrize("amax", [448.0, 1000.0])
def test_quantize_kernels_on_ties_subnormals_and_saturation(tmp_path, kernel, amax):
    """Weights (0, 1) over a block-scaled input and an F32 one make the merged values
    the F32 tensor's exactly: probe values (every E4M3 code, the midpoints between
    codes and one ulp either side, subnormals) scaled into blocks whose amax is
    ``amax`` (s = 1, or s = 1000/448 so the division rounds)."""
    if kernel == "avx2" and not ladle.build_info()["avx2_cpu"]:
        pytest.skip("CPU lacks AVX2/F16C")
    from test_fp8 import _probe_values

    rng = np.random.default_rng(11)
    probes = _probe_values()
    probes = probes[np.isfinite(probes) & (np.abs(probes) <= 448)] * np.float32(amax / 448)
    a = deepseek_checkpoint(tmp_path / "a", 1)
    plain = {}
    for name, shape in SCALED.items():
        x = rng.choice(probes.astype(np.float32), shape).astype(np.float32)
        x[0::BLOCK, 0::BLOCK] = amax  # every block holds its amax
        plain[name] = ("F32", list(shape), x.tobytes())
    plain |= {n: deepseek_tensors(1)[n] for n in PLAIN}
    b = write_raw(tmp_path / "b.safetensors", plain)
    out = tmp_path / "out.safetensors"
    ladle.merge([a, b], [0.0, 1.0], out, dtype="fp8", kernel=kernel, progress=False)
    got = read_checkpoint(out)
    for name, shape in SCALED.items():
        x = np.frombuffer(plain[name][2], np.float32).reshape(shape)
        codes, scales = torch_requantized(x)
        assert got[name][2] == codes and got[name + "_scale_inv"][2] == scales, name


def test_cli_fp8_verify_and_dry_run(tmp_path, capsys):
    a, b = deepseek_checkpoint(tmp_path / "a", 1), deepseek_checkpoint(tmp_path / "b", 2)
    out = tmp_path / "out"
    argv = ["merge", str(a), str(b), "--alpha", "0.25", "-o", str(out), "--dtype", "fp8"]
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "F8_E4M3 (block-scaled, dequantized) -> F8_E4M3 + fresh scales" in text
    assert main([*argv, "--quiet"]) == 0
    assert main(["verify", str(out), "--sample", "-1"]) == 0
    capsys.readouterr()
    # A changed scale is found by the recomputation.
    name = next(iter(SCALED)) + "_scale_inv"
    tensors = read_checkpoint(out)
    dtype, shape, raw = tensors[name]
    tensors[name] = (dtype, shape, (np.frombuffer(raw, np.float32) * 2).tobytes())
    (tmp_path / "bad").mkdir()
    bad = write_raw(tmp_path / "bad" / "model.safetensors", tensors)
    (bad.parent / "config.json").write_bytes((out / "config.json").read_bytes())
    assert main(["verify", str(bad.parent), "--sample", "-1", "--inputs", str(a), str(b),
                 "--weights", "0.75", "0.25"]) == 1
    assert f"tensor '{name}'" in capsys.readouterr().err


def test_all_zero_blocks_get_scale_one(tmp_path):
    """a - a is zero everywhere: every scale is 1 and every code is +0."""
    a = deepseek_checkpoint(tmp_path / "a", 1)
    out = tmp_path / "out.safetensors"
    ladle.merge([a, a], [1.0, -1.0], out, dtype="fp8", progress=False)
    got = read_checkpoint(out)
    for name in SCALED:
        assert set(got[name][2]) == {0}
        assert set(np.frombuffer(got[name + "_scale_inv"][2], np.float32)) == {1.0}


def test_non_finite_merged_values_are_refused(tmp_path):
    a = deepseek_checkpoint(tmp_path / "a", 1)
    out = tmp_path / "out.safetensors"
    with pytest.raises(LadleError, match=r"tensor '.*weight': merged value at element \d+ is "
                                         r"not finite; an FP8 block scale cannot represent"):
        ladle.merge([a, a], [3e38, 3e38], out, dtype="fp8", progress=False)
    assert not out.exists()


def test_fp8_needs_block_scaled_inputs(tmp_path, capsys):
    plain = {"w": ("F32", [4, 4], np.ones(16, np.float32).tobytes())}
    a = write_raw(tmp_path / "a.safetensors", plain)
    assert main(["merge", str(a), str(a), "--alpha", "0.5", "-o", str(tmp_path / "o"),
                 "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error:") and "no input has any" in err
    assert err.count("\n") == 1
    with pytest.raises(LadleValueError, match="--dtype fp8 .* no input has any"):
        ladle.merge([a, a], [0.5, 0.5], tmp_path / "o2", dtype="fp8", progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_fresh_scales_stay_in_their_weights_shard(tmp_path):
    """One job writes a weight and its scales, so a shard split never parts them;
    the sharded output holds the same bytes as the single file."""
    a, b = deepseek_checkpoint(tmp_path / "a", 1), deepseek_checkpoint(tmp_path / "b", 2)
    ladle.merge([a, b], [0.5, 0.5], tmp_path / "one.safetensors", dtype="fp8", progress=False)
    out = tmp_path / "sharded"
    ladle.merge([a, b], [0.5, 0.5], out, dtype="fp8", max_shard_size="1KB", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 4  # one shard per weight (and its scales)
    for name in SCALED:
        assert index[name + "_scale_inv"] == index[name]
    assert read_checkpoint(out) == read_checkpoint(tmp_path / "one.safetensors")


def test_fp8_is_refused_by_the_task_vector_methods(tmp_path):
    from ladle.methods.methods import ties

    plain = {"w": ("F32", [4, 4], np.ones(16, np.float32).tobytes())}
    a, b = write_raw(tmp_path / "a.safetensors", plain), write_raw(tmp_path / "b.safetensors",
                                                                     plain)
    with pytest.raises(LadleValueError, match="'fp8' .* is written by the linear merge only"):
        ties(a, [b], tmp_path / "t", weights=[1.0], dtype="fp8", progress=False)
