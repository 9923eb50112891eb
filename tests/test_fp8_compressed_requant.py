"""``--dtype fp8`` over compressed-tensors checkpoints (strategies tensor, channel and
block; scales F32, BF16 or F16), and BF16/F16 scales as inputs: bit for bit against a
torch reference that dequantizes, merges in fp32 and requantizes exactly as
documented in ladle.engine.fp8_blocks (scale rounded to its dtype before use, one
step up where that rounding would saturate the block's amax). Block rows larger
than a chunk take two passes (csrc/fp8_two_pass.cc): same bytes for every chunk
size and thread count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_fp8_compressed import quant_config

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleError, LadleValueError

from reference import combine, fp8_encode, random_raw, to_f32
from st_io import read_checkpoint, write_raw

torch = pytest.importorskip("torch")

SHAPE = (150, 300)  # 45000 elements: the tensor and 64-row block rows exceed 16K chunks
BLOCK = (64, 64)
TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
INT_VIEWS = {"F32": torch.int32, "BF16": torch.int16, "F16": torch.int16}


def blocks_of(strategy: str, shape: tuple[int, int]) -> tuple[int, int]:
    return {"tensor": shape, "channel": (1, shape[1]), "block": BLOCK}[strategy]


def scale_shape(strategy: str, shape: tuple[int, int]) -> list[int]:
    br, bc = blocks_of(strategy, shape)
    return [1] if strategy == "tensor" else [math.ceil(shape[0] / br), math.ceil(shape[1] / bc)]


def as_dtype(x: np.ndarray, dtype: str) -> bytes:
    """fp32 values rounded to nearest even into ``dtype``'s bytes (torch's cast)."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(TORCH_DTYPES[dtype])
    return t.view(INT_VIEWS[dtype]).numpy().tobytes()


def from_dtype(raw: bytes, dtype: str, shape) -> np.ndarray:
    ints = np.frombuffer(raw, {"F32": np.int32, "BF16": np.int16, "F16": np.int16}[dtype])
    return torch.from_numpy(ints.copy()).view(TORCH_DTYPES[dtype]).float().numpy().reshape(shape)


def tensors(seed: int, strategy: str, scale_dtype: str, shape=SHAPE, spread=50.0,
            scale_range=(1e-3, 1e-1)) -> dict:
    rng = np.random.default_rng(seed)
    codes = fp8_encode(rng.standard_normal(shape) * spread, "F8_E4M3").astype(np.uint8)
    sshape = scale_shape(strategy, shape)
    scale = rng.uniform(*scale_range, sshape).astype(np.float32)
    return {"layer.weight": ("F8_E4M3", list(shape), codes.tobytes()),
            "layer.weight_scale": (scale_dtype, sshape, as_dtype(scale, scale_dtype)),
            "norm.weight": ("BF16", [shape[1]], random_raw(rng, shape[1], "BF16"))}


def checkpoint(directory: Path, t: dict, strategy: str) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "qwen3", "quantization_config": quant_config(strategy)}))
    write_raw(directory / "model.safetensors", t)
    return directory


def full_scales(s: np.ndarray, strategy: str, shape) -> np.ndarray:
    br, bc = blocks_of(strategy, shape)
    s = s.reshape(math.ceil(shape[0] / br), math.ceil(shape[1] / bc))
    return np.repeat(np.repeat(s, br, 0), bc, 1)[:shape[0], :shape[1]]


def dequantized(t: dict, strategy: str) -> bytes:
    """fp32(fp32(W) * fp32(scale)), the scale converted exactly from its dtype."""
    _, shape, raw = t["layer.weight"]
    sdt, sshape, sraw = t["layer.weight_scale"]
    s = full_scales(from_dtype(sraw, sdt, sshape), strategy, shape)
    return (to_f32(raw, "F8_E4M3").reshape(shape) * s).astype(np.float32).tobytes()


def merged(inputs: list[dict], weights: list[float], strategy: str) -> np.ndarray:
    raws = [dequantized(t, strategy) for t in inputs]
    shape = inputs[0]["layer.weight"][1]
    return to_f32(combine(raws, ["F32"] * len(raws), weights, "F32"), "F32").reshape(shape)


def requantized(x: np.ndarray, strategy: str, scale_dtype: str,
                bumped: list | None = None) -> tuple[bytes, bytes]:
    """(F8_E4M3 codes, scales in scale_dtype): s = amax / 448 (1 if 0) in fp32,
    rounded to the scale dtype, one step up if amax / s > 464, q = (x / s) in E4M3."""
    shape = x.shape
    br, bc = blocks_of(strategy, shape)
    grid = (math.ceil(shape[0] / br), math.ceil(shape[1] / bc))
    xt = torch.from_numpy(np.array(x, np.float32))
    padded = torch.zeros(grid[0] * br, grid[1] * bc)
    padded[:shape[0], :shape[1]] = xt
    amax = padded.abs().reshape(grid[0], br, grid[1], bc).amax(dim=(1, 3))
    s = amax / 448.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    stored = s.to(TORCH_DTYPES[scale_dtype])
    over = (amax / stored.float()) > 464.0
    if bumped is not None:
        bumped.append(int(over.sum()))
    ints = stored.view(INT_VIEWS[scale_dtype])
    stored = torch.where(over, ints + 1, ints).view(TORCH_DTYPES[scale_dtype])
    full = torch.from_numpy(full_scales(stored.float().numpy(), strategy, shape))
    q = (xt / full).to(torch.float8_e4m3fn)
    return q.view(torch.uint8).numpy().tobytes(), stored.view(INT_VIEWS[scale_dtype]).numpy().tobytes()


@pytest.mark.parametrize("scale_dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_fp8_keeps_the_compressed_layout_bit_for_bit(tmp_path, strategy, scale_dtype):
    inputs = [tensors(1, strategy, scale_dtype), tensors(2, strategy, scale_dtype)]
    a, b = (checkpoint(tmp_path / n, t, strategy) for n, t in zip("ab", inputs))
    config_before = (a / "config.json").read_bytes()
    codes, scales = requantized(merged(inputs, [0.3, 0.7], strategy), strategy, scale_dtype)
    outs = []
    # one pass (a big budget), and two passes over 16K-element chunks for the tensor
    # and block strategies (their block rows are 45000 and 19200 elements)
    for threads, budget in [(1, 1), (2, 1), (2, "1GiB")]:
        out = tmp_path / f"out{threads}{budget}"
        ladle.merge([a, b], [0.3, 0.7], out, dtype="fp8", threads=threads,
                    memory_budget=budget, progress=False)
        got = read_checkpoint(out)
        assert sorted(got) == sorted(inputs[0])
        assert got["layer.weight"] == ("F8_E4M3", list(SHAPE), codes)
        assert got["layer.weight_scale"] == (scale_dtype, scale_shape(strategy, SHAPE), scales)
        assert got["norm.weight"][0] == "BF16"
        assert (out / "config.json").read_bytes() == config_before  # quantization_config kept
        outs.append(got)
    assert outs[0] == outs[1] == outs[2]
    assert main(["verify", str(out), "--sample", "-1", "--inputs", str(a), str(b),
                 "--weights", "0.3", "0.7"]) == 0


def _core_run(tmp_path, strategy: str, scale_dtype: str, shape, threads: int,
              chunk_elems: int, weights=(0.3, 0.7), device="cpu") -> tuple[bytes, dict]:
    """One --dtype fp8 job through the engine with an explicit chunk size."""
    from ladle import _core
    from ladle.engine.fp8_blocks import add_input_scales, block_scales
    from ladle.formats.checkpoint import open_checkpoint

    ckpts = [open_checkpoint(tmp_path / n) for n in "ab"]
    scaled = [block_scales(c)["layer.weight"] for c in ckpts]
    w = ckpts[0].tensors["layer.weight"]
    s = scaled[0]
    out = np.zeros(w.n_elems + s.info.n_bytes, np.uint8)
    plan = _core.Plan()
    sink = plan.add_memory_sink("out", out.ctypes.data, out.size)
    sources = {}
    for info in [*(c.tensors["layer.weight"] for c in ckpts), *(x.info for x in scaled)]:
        sources.setdefault(info.file, plan.add_file_source(str(info.file),
                                                           info.file.stat().st_size))
    inputs = [_core.Input(sources[c.tensors["layer.weight"].file], c.tensors["layer.weight"].offset,
                          "F8_E4M3", wt) for c, wt in zip(ckpts, weights)]
    plan.add_job("layer.weight", _core.JobKind.sum, w.n_elems, sink, 0, "F8_E4M3", inputs)
    add_input_scales(plan, scaled, shape[1], sources)
    plan.scale_output(sink, w.n_elems, s.block_rows, s.block_cols, shape[1], scale_dtype)
    if device == "cpu":
        stats = _core.run(plan, threads=threads, chunk_elems=chunk_elems)
    else:
        from ladle.engine.cuda import require

        cuda, index, emulate = require(device)
        stats = cuda.run(plan._capsule(), device=index, workers=threads,
                         chunk_elems=chunk_elems, emulate=emulate)
    return out.tobytes(), stats


@pytest.mark.parametrize("strategy,shape", [("tensor", (37, 211)), ("channel", (5, 3001)),
                                            ("block", (150, 300))])
def test_two_passes_do_not_depend_on_chunks_or_threads(tmp_path, strategy, shape):
    """Chunk sizes that cut rows and blocks anywhere (two passes below one block row),
    one and two threads: the reference's bytes every time."""
    inputs = [tensors(3, strategy, "BF16", shape), tensors(4, strategy, "BF16", shape)]
    for n, t in zip("ab", inputs):
        checkpoint(tmp_path / n, t, strategy)
    codes, scales = requantized(merged(inputs, [0.3, 0.7], strategy), strategy, "BF16")
    row = blocks_of(strategy, shape)[0] * shape[1]
    for chunk in (999, 2048, 4099, row, 10**7):
        for threads in (1, 2):
            got, stats = _core_run(tmp_path, strategy, "BF16", shape, threads, chunk)
            assert got == codes + scales, (chunk, threads)
            assert stats["fp8_two_pass"] == (1 if row > chunk else 0)
            assert stats["bytes_read"] == 2 * math.prod(shape)  # the first pass not counted


def test_f16_scales_never_saturate_and_refuse_overflow(tmp_path):
    """Tiny merged values make F16 scales subnormal, where rounding to nearest can
    lose up to half the scale: those blocks take the next F16 value up. Values
    past 448 * 65504 have no F16 scale: an error naming the file and tensor."""
    shape = (64, 40)
    inputs = [tensors(s, "channel", "F16", shape, spread=1.0, scale_range=(1e-6, 3e-5))
              for s in (5, 6)]
    a, b = (checkpoint(tmp_path / n, t, "channel") for n, t in zip("ab", inputs))
    out = tmp_path / "out"
    ladle.merge([a, b], [0.5, 0.5], out, dtype="fp8", progress=False)
    bumped: list = []
    codes, scales = requantized(merged(inputs, [0.5, 0.5], "channel"), "channel", "F16", bumped)
    assert bumped[0] > 0  # the rule was exercised
    got = read_checkpoint(out)
    assert got["layer.weight"][2] == codes and got["layer.weight_scale"][2] == scales
    assert 0x7F not in got["layer.weight"][2] and 0xFF not in got["layer.weight"][2]
    with pytest.raises(LadleValueError, match=r"model.safetensors.*tensor 'layer.weight': "
                                              r"merged values up to .* beyond the largest F16"):
        ladle.merge([a, b], [1e12, 1e12], tmp_path / "big", dtype="fp8", progress=False)
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("budget", [1, "1GiB"])
@pytest.mark.parametrize("strategy", ["tensor", "block"])
def test_non_finite_merged_values_are_refused(tmp_path, strategy, budget):
    inputs = [tensors(7, strategy, "F32")]
    a = checkpoint(tmp_path / "a", inputs[0], strategy)
    out = tmp_path / "out"
    with pytest.raises(LadleError, match=r"model.safetensors: tensor 'layer.weight': merged "
                                         r"value at element \d+ is not finite"):
        ladle.merge([a, a], [3e38, 3e38], out, dtype="fp8", memory_budget=budget,
                    progress=False)
    assert not out.exists()


@pytest.mark.parametrize("scale_dtype", ["BF16", "F16"])
def test_bf16_and_f16_scales_are_read_exactly(tmp_path, scale_dtype, capsys):
    """Dequantized to BF16 (the default): the scales enter as their exact fp32 values;
    `ladle merge --dry-run` (the pre-flight report) and `ladle verify` accept them."""
    inputs = [tensors(8, "block", scale_dtype), tensors(9, "block", scale_dtype)]
    a, b = (checkpoint(tmp_path / n, t, "block") for n, t in zip("ab", inputs))
    out = tmp_path / "out"
    assert main(["merge", str(a), str(b), "--alpha", "0.6", "-o", str(out), "--dry-run"]) == 0
    assert "(block-scaled, dequantized) -> BF16" in capsys.readouterr().out
    ladle.merge([a, b], [0.4, 0.6], out, progress=False)
    raws = [dequantized(t, "block") for t in inputs]
    assert read_checkpoint(out)["layer.weight"][2] == combine(raws, ["F32"] * 2, [0.4, 0.6],
                                                                "BF16")
    assert main(["verify", str(out), "--sample", "-1", "--inputs", str(a), str(b),
                 "--weights", "0.4", "0.6"]) == 0


def test_round_trip_through_safetensors(tmp_path):
    """torch reads the output as float8_e4m3fn + bfloat16 scales; dequantized, it is
    within half an E4M3 step (relative 2^-4) of the fp32 merge."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    inputs = [tensors(10, "channel", "BF16"), tensors(11, "channel", "BF16")]
    a, b = (checkpoint(tmp_path / n, t, "channel") for n, t in zip("ab", inputs))
    ladle.merge([a, b], [0.5, 0.5], tmp_path / "out", dtype="fp8", progress=False)
    got = safetensors_torch.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got["layer.weight"].dtype == torch.float8_e4m3fn
    assert got["layer.weight_scale"].dtype == torch.bfloat16
    assert got["layer.weight_scale"].shape == (SHAPE[0], 1)
    back = got["layer.weight"].float() * got["layer.weight_scale"].float()
    x = torch.from_numpy(merged(inputs, [0.5, 0.5], "channel"))
    step = got["layer.weight_scale"].float() * 2.0 ** -9  # E4M3's smallest subnormal step
    assert torch.all((back - x).abs() <= torch.maximum(x.abs() * 2.0 ** -4, step))


def test_fp8_needs_the_first_input_block_scaled(tmp_path):
    """The output's config.json is the first input's: a first input whose weight is
    not block-scaled cannot describe fresh scales."""
    t = tensors(12, "tensor", "F32")
    b = checkpoint(tmp_path / "b", t, "tensor")
    plain = {n: v for n, v in t.items() if n != "layer.weight_scale"}
    plain["layer.weight"] = ("BF16", list(SHAPE), random_raw(np.random.default_rng(0),
                                                               math.prod(SHAPE), "BF16"))
    a = tmp_path / "a"
    a.mkdir()
    write_raw(a / "model.safetensors", plain)
    with pytest.raises(LadleValueError, match=r"tensor 'layer.weight' is not block-scaled FP8 "
                                              r"here but is in .*list a block-scaled "
                                              r"checkpoint first"):
        ladle.merge([a, b], [0.5, 0.5], tmp_path / "out", dtype="fp8", progress=False)
    ladle.merge([b, a], [0.5, 0.5], tmp_path / "ok", dtype="fp8", progress=False)
    assert read_checkpoint(tmp_path / "ok")["layer.weight"][0] == "F8_E4M3"


BIG = (8192, 8192)  # one tensor-strategy block of 64 Mi elements: 256 MiB as fp32

CHILD = """
import sys, ladle
ladle.merge([sys.argv[1], sys.argv[2]], [0.3, 0.7], sys.argv[3], dtype="fp8",
            memory_budget="16MiB", progress=False)
status = open("/proc/self/status").read()
print([l for l in status.splitlines() if l.startswith("VmHWM")][0].split()[1])
"""


def test_tensor_strategy_streams_in_two_passes_under_a_small_budget(tmp_path):
    """A whole-tensor buffer (256 MiB of fp32) cannot pass: the child's peak RSS,
    inputs' mapped pages included, stays under 128 MiB; the bytes are the
    reference's, computed here chunk by chunk too."""
    import subprocess
    import sys

    from child_env import child_env

    n = math.prod(BIG)
    for name, seed, scale in (("a", 1, 0.02), ("b", 2, 0.05)):
        rng = np.random.default_rng(seed)
        codes = rng.integers(0, 0x7E, n, dtype=np.uint8) | (rng.integers(0, 2, n, np.uint8) << 7)
        checkpoint(tmp_path / name, {
            "layer.weight": ("F8_E4M3", list(BIG), codes.tobytes()),
            "layer.weight_scale": ("F32", [1], np.float32(scale).tobytes())}, "tensor")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "a"),
                             str(tmp_path / "b"), str(out)],
                            capture_output=True, text=True, env=child_env(), check=True)
    peak_kib = int(result.stdout.strip().splitlines()[-1])
    assert peak_kib <= 128 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB > 128 MiB"
    files = [np.memmap(tmp_path / p / "model.safetensors", np.uint8, mode="r")
             for p in ("a", "b", "out")]
    start = [8 + int(np.frombuffer(bytes(f[:8]), "<u8")[0]) for f in files]
    header = json.loads(bytes(files[2][8:start[2]]))
    w0 = start[2] + header["layer.weight"]["data_offsets"][0]
    got_scale = np.frombuffer(bytes(files[2][start[2] + header["layer.weight_scale"][
        "data_offsets"][0]:][:4]), np.float32)[0]
    step = 1 << 22

    def merged_chunk(off: int) -> np.ndarray:
        raws = [(to_f32(bytes(f[s + off:s + off + step]), "F8_E4M3") * np.float32(sc))
                .astype(np.float32).tobytes()
                for f, s, sc in zip(files, start, (0.02, 0.05))]
        return to_f32(combine(raws, ["F32", "F32"], [0.3, 0.7], "F32"), "F32")

    amax = max(float(np.abs(merged_chunk(off)).max()) for off in range(0, n, step))
    s = np.float32(amax) / np.float32(448.0)
    assert got_scale == s
    for off in range(0, n, step):
        q = (torch.from_numpy(merged_chunk(off)) / float(s)).to(torch.float8_e4m3fn)
        assert bytes(files[2][w0 + off:w0 + off + step]) == q.view(torch.uint8).numpy().tobytes()
