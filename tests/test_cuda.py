"""The CUDA backend.

Three layers, so most of it is checked on machines without a GPU:
- availability: ``import ladle``, ``build_info()``, ``cuda_available()`` and the
  errors for ``device="cuda"`` behave with no driver/GPU (always run);
- emulator: the CUDA engine's host code (chunking, staging layout, descriptor
  tables) and the kernel's per-thread code, run on the CPU (``device=
  "cuda-emulator"``), must match the CPU engine and the numpy contract bit for
  bit (run whenever ladle._cuda was compiled);
- GPU: the same comparisons on a real device (skipped, with the reason, when
  there is none).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import ladle
from ladle.cli import cli
from ladle.engine.cuda import EMULATOR, DeviceSum, cuda_info

from reference import combine, from_f32, random_raw
from st_io import read_checkpoint, write_raw, write_sharded

DTYPES = ["F32", "F16", "BF16"]
SIZES = [0, 1, 7, 8, 9, 15, 17, 4095, 4097, 40_000, 70_001]  # tails, tile and chunk boundaries

COMPILED = ladle.build_info()["cuda_compiled"]
INFO = cuda_info()
HAVE_GPU = ladle.cuda_available()

needs_module = pytest.mark.skipif(not INFO["compiled"],
                                  reason=f"CUDA backend not built: {INFO['error']}")
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"no usable CUDA GPU: {INFO['error']}")

# Every engine test runs on the emulator and, when present, the GPU.
DEVICES = [pytest.param(EMULATOR, marks=needs_module),
           pytest.param("cuda", marks=[needs_gpu, pytest.mark.gpu])]


# ---- availability (always runs) ----

def test_build_info_and_availability_never_raise():
    info = ladle.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(ladle.cuda_available(), bool)
    details = ladle.cuda_info()
    assert details["compiled"] == (INFO["compiled"])
    if details["compiled"]:
        assert "sm_90" in details["archs"] and details["runtime_version"] >= 12000
    if not ladle.cuda_available():
        assert details["device_count"] == 0 and details["error"]
    else:
        assert details["devices"][0]["total_n_bytes"] > 0


def test_import_ladle_does_not_load_cuda_module():
    import subprocess
    import sys

    code = "import sys, ladle; ladle.build_info(); print('ladle._cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_unusable_cuda_device_is_a_clear_backend_error(tmp_path):
    """Without a GPU every CUDA device is unusable; with one, an index past the last."""
    bad = f"cuda:{INFO['device_count']}" if HAVE_GPU else "cuda"
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    out = tmp_path / "o.safetensors"
    with pytest.raises(ladle.BackendError, match=f"device '{bad}' requested but"):
        ladle.merge([a, a], [0.5, 0.5], out, device=bad, progress=False)
    with pytest.raises(ladle.BackendError):
        ladle.interpolate(a, a, 0.5, out, device=bad, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    # The CLI turns it into one line and exit status 2.
    rc = cli.main(["merge", str(a), str(a), "--alpha", "0.5", "-o", str(out), "--device",
                   bad, "--quiet"])
    assert rc == 2 and not out.exists()


def test_bad_device_string(tmp_path):
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    with pytest.raises(ladle.LadleValueError, match="unknown device"):
        ladle.merge([a], [1.0], tmp_path / "o.safetensors", device="tpu", progress=False)
    with pytest.raises(ladle.LadleValueError, match="cannot be combined"):
        ladle.merge([a], [1.0], tmp_path / "o.safetensors", device=EMULATOR, kernel="avx2",
                    progress=False)


# ---- engine: emulator and GPU vs the CPU engine and the numpy contract ----

def _inputs(tmp_path, rng, dtypes, sizes, special=True):
    paths, raws = [], []
    for k, dtype in enumerate(dtypes):
        tensors = {f"t{j}": (dtype, [n], random_raw(rng, n, dtype, special))
                   for j, n in enumerate(sizes)}
        paths.append(write_raw(tmp_path / f"in{k}.safetensors", tensors))
        raws.append(tensors)
    return paths, raws


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dtype,out_dtype",
                         list(itertools.product(DTYPES, DTYPES + ["F64"])))
def test_weighted_sum_bit_exact(tmp_path, device, in_dtype, out_dtype):
    rng = np.random.default_rng(DTYPES.index(in_dtype) * 4 + (DTYPES + ["F64"]).index(out_dtype))
    for n_inputs in range(1, 9):
        d = tmp_path / f"n{n_inputs}"
        d.mkdir()
        paths, raws = _inputs(d, rng, [in_dtype] * n_inputs, SIZES)
        weights = list(rng.uniform(-1.5, 1.5, n_inputs))
        if n_inputs > 2:
            weights[1] = 0.0  # zero weights skip their input
        outs = {}
        for dev in (device, "cpu"):
            outs[dev] = d / f"{dev}.safetensors"
            ladle.merge(paths, weights, outs[dev], dtype=out_dtype, device=dev,
                        progress=False, memory_budget=1)  # smallest chunks
        got, cpu = read_checkpoint(outs[device]), read_checkpoint(outs["cpu"])
        assert got == cpu, f"{n_inputs} inputs: GPU path differs from the CPU engine"
        for name in raws[0]:
            expected = combine([r[name][2] for r in raws], [in_dtype] * n_inputs, weights,
                               out_dtype)
            assert got[name][2] == expected, f"{name} ({n_inputs} inputs)"


@pytest.mark.parametrize("device", DEVICES)
def test_special_values_and_canonical_nan(tmp_path, device):
    bf = np.array([0xFFC1, 0x7F81, 0x3F80, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x7F7F],
                  dtype=np.uint16).tobytes()  # -qNaN, sNaN, 1, Inf, -Inf, subnormal, -0, max
    f16 = np.array([0xFE01, 0x7C01, 0x3C00, 0x7C00, 0xFC00, 0x0001, 0x8000, 0x7BFF],
                   dtype=np.uint16).tobytes()
    f32 = np.array([0xFFC00001, 0x7F800001, 0x3F800000, 0x7F800000, 0xFF800000, 0x00000001,
                    0x80000000, 0x7F7FFFFF], dtype=np.uint32).tobytes()
    for dtype, raw in (("BF16", bf), ("F16", f16), ("F32", f32)):
        a = write_raw(tmp_path / f"{dtype}.safetensors", {"x": (dtype, [8], raw)})
        for weights in ([1.0], [0.5, 0.5], [2.0, -1.0], [1e30, 1e30]):
            for out_dtype in DTYPES:
                outs = [tmp_path / f"{dtype}-{dev}.safetensors" for dev in (device, "cpu")]
                for dev, out in zip((device, "cpu"), outs):
                    ladle.merge([a] * len(weights), weights, out, dtype=out_dtype, device=dev,
                                progress=False, overwrite=True)
                got, cpu = read_checkpoint(outs[0]), read_checkpoint(outs[1])
                assert got == cpu, (dtype, weights, out_dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_sharded_and_pass_through(tmp_path, device):
    rng = np.random.default_rng(7)
    ids = np.arange(1000, dtype=np.int64).tobytes()
    tensors = [{f"layer{i}.w": ("BF16", [64, 33], random_raw(rng, 64 * 33, "BF16"))
                for i in range(5)} | {"ids": ("I64", [1000], ids)} for _ in range(2)]
    a = write_sharded(tmp_path / "a", tensors[0], 3)
    b = write_sharded(tmp_path / "b", tensors[1], 2)
    for dev in (device, "cpu"):
        ladle.interpolate(a, b, 0.3, tmp_path / dev, dtype="F32", max_shard_size=10_000,
                          device=dev, progress=False)
    assert read_checkpoint(tmp_path / device) == read_checkpoint(tmp_path / "cpu")
    assert read_checkpoint(tmp_path / device)["ids"][2] == ids


@pytest.mark.parametrize("device", DEVICES)
def test_int_policy_max_matches_the_cpu_engine(tmp_path, device):
    rng = np.random.default_rng(9)
    tensors = [{"w": ("BF16", [4097], random_raw(rng, 4097, "BF16")),
                "ids": ("I32", [70_001], rng.integers(-2**31, 2**31 - 1, 70_001,
                                                      dtype=np.int32).tobytes()),
                "mask": ("BOOL", [9], (rng.random(9) < 0.5).tobytes())} for _ in range(3)]
    paths = [write_raw(tmp_path / f"in{k}.safetensors", t) for k, t in enumerate(tensors)]
    for dev in (device, "cpu"):
        ladle.merge(paths, [0.2, 0.3, 0.5], tmp_path / f"{dev}.safetensors", device=dev,
                    int_policy="max", memory_budget="1MiB", progress=False)
    got = read_checkpoint(tmp_path / f"{device}.safetensors")
    assert got == read_checkpoint(tmp_path / "cpu.safetensors")
    ids = [np.frombuffer(t["ids"][2], np.int32) for t in tensors]
    assert got["ids"][2] == np.maximum(np.maximum(ids[0], ids[1]), ids[2]).tobytes()


@pytest.mark.parametrize("device", DEVICES)
def test_torch_bin_inputs_on_the_device(tmp_path, device):
    """PyTorch .bin directories (memory-mapped by ladle.formats.torch_bin) stream to the
    device like safetensors: same bytes as the CPU engine, config copied."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(4)
    dirs = []
    for k in range(2):
        d = tmp_path / f"m{k}"
        d.mkdir()
        torch.save({"w": torch.randn(301, 7, generator=g).to(torch.bfloat16),
                    "b": torch.randn(5, generator=g)}, d / "pytorch_model.bin")
        (d / "config.json").write_text('{"model_type": "toy"}\n')
        dirs.append(d)
    for dev in (device, "cpu"):
        ladle.merge(dirs, [0.3, 0.7], tmp_path / f"out-{dev}", device=dev,
                    memory_budget="1MiB", progress=False)
    got = read_checkpoint(tmp_path / f"out-{device}")
    assert got == read_checkpoint(tmp_path / "out-cpu") and set(got) == {"w", "b"}
    assert (tmp_path / f"out-{device}" / "config.json").read_text() == '{"model_type": "toy"}\n'


@pytest.mark.parametrize("device", DEVICES)
def test_endpoints_chunking_and_workers_do_not_change_bits(tmp_path, device):
    rng = np.random.default_rng(8)
    paths, raws = _inputs(tmp_path, rng, ["BF16", "BF16"], [300_001, 5])
    for alpha, source in ((0.0, 0), (1.0, 1)):
        out = tmp_path / f"alpha{alpha}.safetensors"
        ladle.interpolate(paths[0], paths[1], alpha, out, device=device, progress=False)
        assert {n: v[2] for n, v in read_checkpoint(out).items()} == \
            {n: v[2] for n, v in raws[source].items()}
    outs = []
    for threads, budget in ((1, 1), (2, "1MiB"), (4, "256MiB")):
        out = tmp_path / f"o{threads}.safetensors"
        ladle.merge(paths, [0.25, 0.75], out, threads=threads, memory_budget=budget,
                    device=device, progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("device", DEVICES)
def test_check_finite_and_mismatch_errors(tmp_path, device):
    nan = np.array([1.0, np.nan, 2.0], dtype=np.float32).tobytes()
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], nan)})
    with pytest.raises(ladle.NonFiniteError, match="'w'.*element 1"):
        ladle.merge([a, a], [0.5, 0.5], tmp_path / "o.safetensors", check_finite=True,
                    device=device, progress=False)
    big = np.array([3e38, 1.0], dtype=np.float32).tobytes()
    b = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [2], big)})
    with pytest.raises(ladle.NonFiniteError, match="merged value at element 0"):
        ladle.merge([b, b], [1.0, 1.0], tmp_path / "o.safetensors", check_finite=True,
                    device=device, progress=False)
    c = write_raw(tmp_path / "c.safetensors", {"ids": ("I32", [2], b"\1\0\0\0\2\0\0\0")})
    d = write_raw(tmp_path / "d.safetensors", {"ids": ("I32", [2], b"\1\0\0\0\3\0\0\0")})
    with pytest.raises(ladle.MismatchError, match="element 1"):
        ladle.merge([c, d], [0.5, 0.5], tmp_path / "o.safetensors", device=device,
                    int_policy="error", progress=False)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("device", DEVICES)
def test_cli_device_flag(tmp_path, device):
    rng = np.random.default_rng(9)
    paths, _ = _inputs(tmp_path, rng, ["BF16"] * 3, [5000])
    for dev in (device, "cpu"):
        rc = cli.main(["soup", *map(str, paths), "-o", str(tmp_path / f"{dev}.safetensors"),
                       "--device", dev, "--quiet"])
        assert rc == 0
    assert read_checkpoint(tmp_path / f"{device}.safetensors") == \
        read_checkpoint(tmp_path / "cpu.safetensors")


# ---- GPU-resident DeviceSum (torch tensors: CPU ones on the emulator) ----

TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _tensor(torch, raw: bytes, dtype: str, device: str, misalign: bool):
    """A tensor holding `raw`; misaligned by one element (scalar path) on request."""
    n = len(raw) // (4 if dtype == "F32" else 2)
    bits = torch.frombuffer(bytearray(raw), dtype=torch.int32 if dtype == "F32" else torch.int16)
    flat = torch.zeros(n + 1, dtype=getattr(torch, TORCH_DTYPES[dtype]), device=device)
    t = flat[1:] if misalign else flat[:n]
    t.view(bits.dtype).copy_(bits)
    return t


def _raw(t) -> bytes:
    import torch

    return t.detach().cpu().view(torch.int32 if t.element_size() == 4 else torch.int16) \
        .numpy().tobytes()


@pytest.mark.parametrize("device", DEVICES)
def test_device_sum_float64_is_summed_in_fp64(device):
    """Issue 15: float64 tensors in a DeviceSum are accumulated in fp64 (1e300 stays
    finite, 0.1 stays 0.1); a narrower output with a float64 input is rounded from
    the fp64 sum through fp32, as the host engine's store_f64 does."""
    torch = pytest.importorskip("torch")
    emulate = device == EMULATOR
    tdev = "cpu" if emulate else "cuda"
    a = [1e300, 0.1, 1 / 3, -2.5e-310, float("nan"), 1e308, 3.0]
    b = [1e300, 0.2, 2 / 3, 1e-310, 1.0, 1e308, -7.0]
    x0 = {n: torch.tensor(a, dtype=torch.float64, device=tdev) for n in ("wide", "narrow")}
    x1 = {"wide": torch.tensor(b, dtype=torch.float64, device=tdev),
          "narrow": torch.tensor(b, dtype=torch.float32, device=tdev)}  # mixed inputs
    outs = {"wide": torch.zeros(len(a), dtype=torch.float64, device=tdev),
            "narrow": torch.zeros(len(a), dtype=torch.float32, device=tdev)}
    summer = DeviceSum(outs, x0, x1, emulate=emulate)
    for alpha in (0.3, 0.0, 1.0):
        summer.interpolate(alpha)
        w0, w1 = 1.0 - alpha, alpha
        for name, out in outs.items():
            p0 = x0[name].cpu().numpy()
            p1 = x1[name].cpu().numpy().astype(np.float64)
            terms = [w * x for w, x in ((w0, p0), (w1, p1)) if w != 0.0]
            acc = terms[0] + terms[1] if len(terms) == 2 else terms[0]
            if name == "wide":
                want = np.where(np.isnan(acc), np.float64("nan"), acc).view(np.uint64)
                want = np.where(np.isnan(acc), np.uint64(0x7FF8000000000000), want)
                got = out.cpu().numpy().view(np.uint64)
            else:
                f = acc.astype(np.float32)
                want = np.where(np.isnan(f), np.uint32(0x7FC00000), f.view(np.uint32))
                got = out.cpu().numpy().view(np.uint32)
            assert got.tolist() == want.tolist(), (name, alpha)
    assert outs["wide"][0].item() == 1e300 and np.isfinite(outs["wide"][5].item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("misalign", [False, True])
def test_device_sum_matches_contract(device, misalign):
    torch = pytest.importorskip("torch")
    emulate = device == EMULATOR
    tdev = "cpu" if emulate else "cuda"
    rng = np.random.default_rng(10)
    for n_inputs in (1, 2, 3, 8, 33):  # 33 > 32: weights go through the table
        in_dtypes = [DTYPES[(k + n_inputs) % 3] for k in range(n_inputs)]  # mixed dtypes
        sizes = [1, 7, 8, 2049, 20_001]
        raws = {f"t{j}": [random_raw(rng, n, d, special=True) for d in in_dtypes]
                for j, n in enumerate(sizes)}
        inputs = [{name: _tensor(torch, raws[name][k], in_dtypes[k], tdev, misalign)
                   for name in raws} for k in range(n_inputs)]
        for out_dtype in DTYPES:
            outs = {name: _tensor(torch, b"\0" * (n * (4 if out_dtype == "F32" else 2)),
                                  out_dtype, tdev, misalign)
                    for name, n in zip(raws, sizes)}
            summer = DeviceSum(outs, *inputs, emulate=emulate)
            for trial in range(2):
                weights = list(rng.uniform(-2, 2, n_inputs))
                if n_inputs > 1:
                    weights[trial % n_inputs] = 0.0
                scale = 1.0 if trial == 0 else 0.37
                summer(weights, post_scale=scale)
                if not emulate:
                    torch.cuda.synchronize()
                for name, name_raws in raws.items():
                    expected = combine(name_raws, in_dtypes, weights, out_dtype, scale)
                    assert _raw(outs[name]) == expected, (n_inputs, out_dtype, name, trial)


@pytest.mark.parametrize("device", DEVICES)
def test_device_sum_interpolate_sweep_and_in_place(device):
    torch = pytest.importorskip("torch")
    emulate = device == EMULATOR
    tdev = "cpu" if emulate else "cuda"
    gen = torch.Generator().manual_seed(0)
    theta0 = {f"p{i}": torch.randn(257 * (i + 1), generator=gen).to(torch.bfloat16).to(tdev)
              for i in range(6)}
    theta1 = {n: torch.randn(t.shape, generator=gen).to(torch.bfloat16).to(tdev)
              for n, t in theta0.items()}
    live = {n: torch.empty_like(t) for n, t in theta0.items()}
    wise = DeviceSum(live, theta0, theta1, emulate=emulate)
    for alpha in [i / 20 for i in range(21)]:
        wise.interpolate(alpha)
        for n, out in live.items():
            ref = combine([_raw(theta0[n]), _raw(theta1[n])], ["BF16", "BF16"],
                          [1.0 - alpha, alpha], "BF16")
            assert _raw(out) == ref, (alpha, n)
    # In place: theta0 <- 0.5 theta0 + 0.5 theta1 (each thread reads before it writes).
    before = {n: _raw(t) for n, t in theta0.items()}
    DeviceSum(theta0, theta0, theta1, emulate=emulate)([0.5, 0.5])
    for n, t in theta0.items():
        assert _raw(t) == combine([before[n], _raw(theta1[n])], ["BF16"] * 2, [0.5, 0.5],
                                  "BF16")


@needs_module
def test_device_sum_argument_errors():
    torch = pytest.importorskip("torch")
    a, b = torch.zeros(4), torch.zeros(5)
    with pytest.raises(ladle.LadleValueError, match="elements"):
        DeviceSum([a], [b], emulate=True)
    with pytest.raises(ladle.LadleValueError, match="tensor names"):
        DeviceSum({"x": a}, {"y": a}, emulate=True)
    with pytest.raises(ladle.LadleValueError, match="cannot be merged"):
        DeviceSum([a], [torch.zeros(4, dtype=torch.int32)], emulate=True)
    with pytest.raises(ladle.LadleValueError, match="contiguous"):
        DeviceSum([torch.zeros(4, 2).t()], [torch.zeros(8)], emulate=True)
    with pytest.raises(ladle.LadleValueError, match="weights given"):
        DeviceSum([a], [a], emulate=True)([1.0, 2.0])
    if not HAVE_GPU:
        with pytest.raises(ladle.BackendError):
            DeviceSum([a], [a])
    else:
        with pytest.raises(ladle.LadleValueError, match="CUDA tensor"):
            DeviceSum([a], [a])


@pytest.mark.parametrize("device", DEVICES)
def test_block_scaled_fp8_matches_the_cpu_engine(tmp_path, device):
    """Jobs with block-scaled FP8 inputs run on the host in the CUDA engine (like its
    fp64 jobs): same bytes as the CPU engine and the numpy reference."""
    from test_fp8_blocks import deepseek_checkpoint, deepseek_tensors, expected

    a = deepseek_checkpoint(tmp_path / "a", 1, sharded=True)
    b = deepseek_checkpoint(tmp_path / "b", 2)
    for dev in (device, "cpu"):
        ladle.merge([a, b], [0.25, 0.75], tmp_path / dev, device=dev, progress=False)
    got = read_checkpoint(tmp_path / device)
    assert got == read_checkpoint(tmp_path / "cpu")
    assert got == expected([deepseek_tensors(1), deepseek_tensors(2)], [0.25, 0.75])


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_output_matches_the_cpu_engine(tmp_path, device, capsys):
    """--dtype fp8 on the CUDA engine: its jobs run on the host (said by the report
    and the CLI), same bytes as the CPU engine, DeepSeek and compressed-tensors."""
    from test_fp8_blocks import deepseek_checkpoint
    from test_fp8_compressed_requant import checkpoint, tensors

    pairs = {"deepseek": [deepseek_checkpoint(tmp_path / f"d{i}", i) for i in (1, 2)]}
    for strategy in ("tensor", "block"):
        pairs[strategy] = [checkpoint(tmp_path / f"{strategy}{i}",
                                      tensors(i, strategy, "BF16"), strategy) for i in (1, 2)]
    for layout, (a, b) in pairs.items():
        for budget in (1, "1GiB"):
            got = {}
            for dev in (device, "cpu"):
                out = tmp_path / f"{layout}-{budget}-{dev}"
                report = ladle.merge([a, b], [0.25, 0.75], out, device=dev, dtype="fp8",
                                     memory_budget=budget, progress=False)
                got[dev] = read_checkpoint(out)
                assert report.host_sums == (0 if dev == "cpu" else
                                            sum(t.out_scales is not None
                                                for t in report.plan.tensors))
            assert got[device] == got["cpu"], (layout, budget)
    assert cli.main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "cli"),
                     "--dtype", "fp8", "--device", device]) == 0
    assert "1 tensor(s) computed on the host" in capsys.readouterr().out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy,shape", [("tensor", (37, 211)), ("block", (150, 300))])
def test_fp8_two_passes_on_the_cuda_engine(tmp_path, device, strategy, shape):
    """Block rows larger than a chunk: the first pass runs on the host too; the bytes
    are the CPU engine's for every chunk size and worker count."""
    from test_fp8_compressed_requant import _core_run, checkpoint, tensors

    for n, seed in (("a", 1), ("b", 2)):
        checkpoint(tmp_path / n, tensors(seed, strategy, "F16", shape), strategy)
    want, _ = _core_run(tmp_path, strategy, "F16", shape, 1, 0)
    for chunk in (999, 4099, 10**7):
        for workers in (1, 3):
            got, stats = _core_run(tmp_path, strategy, "F16", shape, workers, chunk,
                                   device=device)
            assert got == want, (chunk, workers)
            assert stats["host_sums"] == 1
            assert stats["fp8_two_pass"] == (1 if chunk < 10**7 else 0)


# ---- merge methods (ladle.methods) on the CUDA backend vs the CPU engine ----

# Odd sizes around the 2048-element tile: tails, one tile, tile + 1, many tiles.
METHOD_SIZES = [("a", 1), ("b", 7), ("c", 2047), ("d", 2049), ("e", 9000)]
# Every method, with per-model settings that exercise its statistics: TIES/breadcrumbs
# thresholds inside big ties (coarse values), DARE's draws with L1 and density
# rescaling, the Gram reductions of SLERP / model stock / nuslerp.
METHOD_RUNS = {
    "linear": ({}, [{"weight": 0.3}, {"weight": 0.7}, {"weight": 0.2}]),
    "task_arithmetic": ({"lambda": 0.8}, [{"weight": 0.7}, {"weight": -0.4}, {"weight": 1.3}]),
    "ties": ({"lambda": 0.8}, [{"weight": 0.7, "density": 0.3},
                               {"weight": -0.4, "density": [0.9, 0.2]},
                               {"weight": 1.3, "density": 0.55}]),
    "ties_sum": ({"normalize": False}, [{"weight": 1.0, "density": 0.37},
                                        {"weight": 0.6, "density": 0.5}]),
    "dare_ties": ({"rescale": True}, [{"weight": 1.0, "density": 0.4},
                                      {"weight": 0.5, "density": 0.6}]),
    "dare_linear": ({"rescale": True}, [{"weight": 1.0, "density": 0.4},
                                        {"weight": 0.5, "density": 0.6}]),
    "dare_density": ({"rescale": True}, [{"weight": 1.0, "density": 0.4},
                                         {"weight": 0.5, "density": 0.6}]),
    "breadcrumbs": ({}, [{"weight": 1.0, "density": 0.8, "gamma": 0.1},
                         {"weight": 0.6, "density": 0.5, "gamma": 0.05}]),
    "breadcrumbs_ties": ({}, [{"weight": 1.0, "density": 0.8, "gamma": 0.1},
                              {"weight": 0.6, "density": 0.5, "gamma": 0.05}]),
    "slerp": ({"t": [0.0, 0.3, 1.0]}, [{}]),
    "model_stock": ({}, [{}, {}, {}]),
    "model_stock_rows": ({"filter_wise": True}, [{}, {}]),
    "nuslerp": ({}, [{"weight": 0.3}, {"weight": 0.9}]),
    "nuslerp_rows": ({"nuslerp_flatten": False}, [{"weight": 0.3}, {"weight": 0.9}]),
    "nearswap": ({"t": 0.001}, [{}]),
    "sce": ({"select_topk": 0.4}, [{}, {}, {}]),
}


def _method_models(tmp_path, n_models, dtype):
    """Base + n fine-tunes with coarse deltas (many equal magnitudes) and a 2-D tensor."""
    rng = np.random.default_rng(n_models)
    sizes = METHOD_SIZES + [("m", 33 * 61)]
    raws = [{} for _ in range(n_models + 1)]
    for name, n in sizes:
        base = rng.standard_normal(n).astype(np.float32)
        shape = [33, 61] if name == "m" else [n]
        for k in range(n_models + 1):
            delta = np.round(rng.standard_normal(n) * 4) / 64 if k else 0
            x = (base + delta).astype(np.float32)
            raws[k][name] = (dtype, shape, from_f32(x, dtype))
    return [write_raw(tmp_path / f"m{k}.safetensors", r) for k, r in enumerate(raws)]


def _run_method(name, paths, out, device, **options):
    """METHOD_RUNS[name] over paths[0] (the base) and the next models; linear and the
    per-row nuslerp run without a base (nuslerp with one runs its task program)."""
    method = {"ties_sum": "ties", "dare_density": "dare_linear", "model_stock_rows": "model_stock",
              "nuslerp_rows": "nuslerp"}.get(name, name)
    parameters, per_model = METHOD_RUNS[name]
    base = None if name in ("linear", "nuslerp_rows") else paths[0]
    models = paths[1:len(per_model) + 1] if base else paths[:len(per_model)]
    return ladle.methods.methods.merge_models(
        method, models, out, base_model=base, parameters=parameters, model_parameters=per_model,
        seed=7, rescale_mode="density" if name == "dare_density" else "l1", device=device,
        progress=False, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(METHOD_RUNS))
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_every_method_is_bit_identical_to_the_cpu_engine(tmp_path, device, name, dtype):
    paths = _method_models(tmp_path, 3, dtype)
    expected = tmp_path / "cpu.safetensors"
    _run_method(name, paths, expected, "cpu")
    # The default chunk, one tile per chunk, and a budget that cuts 9000 elements in 3.
    for i, options in enumerate([{}, {"chunk_elems": 2048}, {"memory_budget": "64KiB"}]):
        out = tmp_path / f"dev{i}.safetensors"
        _run_method(name, paths, out, device, **options)
        assert out.read_bytes() == expected.read_bytes(), f"{name} {options}"


@pytest.mark.parametrize("device", DEVICES)
def test_ties_threshold_ties_keep_lowest_indices_on_device(tmp_path, device):
    """The threshold falls inside 8571 equal magnitudes spread over 5 tiles and chunks."""
    n = 10_000
    base = np.zeros(n, dtype=np.float32)
    delta = np.full(n, 0.5, dtype=np.float32)
    delta[::7] = 2.0
    delta[3::11] *= -1
    a = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [n], base.tobytes())})
    b = write_raw(tmp_path / "x.safetensors", {"w": ("F32", [n], (base + delta).tobytes())})
    for chunk in (2048, 4096, 0):
        out = tmp_path / f"o{chunk}.safetensors"
        ladle.methods.methods.merge_models("ties", [b], out, base_model=a, chunk_elems=chunk,
                                   model_parameters=[{"weight": 1.0, "density": 0.3}],
                                   device=device, progress=False)
        got = np.frombuffer(read_checkpoint(out)["w"][2], dtype=np.float32)
        winners = np.flatnonzero(np.abs(delta) == 2.0)
        ties = np.flatnonzero(np.abs(delta) == 0.5)[:3000 - winners.size]
        expected = np.zeros(n, dtype=np.float32)
        expected[winners] = delta[winners]
        expected[ties] = delta[ties]
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_method_check_finite_on_device(tmp_path, device):
    nan = np.array([1.0, np.nan, 2.0], dtype=np.float32).tobytes()
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    b = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [3], nan)})
    out = tmp_path / "o.safetensors"
    with pytest.raises(ladle.NonFiniteError, match="b.safetensors: tensor 'w'.*element 1"):
        ladle.methods.methods.ties(a, [b], out, weights=[1.0], density=0.5, check_finite=True,
                           device=device, progress=False)
    big = np.array([3e38, 1.0, 3e38], dtype=np.float32).tobytes()
    c = write_raw(tmp_path / "c.safetensors", {"w": ("F32", [3], big)})
    with pytest.raises(ladle.NonFiniteError, match="tensor 'w': merged value at element 0"):
        ladle.methods.methods.task_arithmetic(a, [c, c], out, weights=[1.0, 1.0], check_finite=True,
                                      device=device, progress=True)  # the bar runs too
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


def _recipe(tmp_path, paths) -> Path:
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(f"merge_method: dare_ties\nbase_model: {paths[0]}\nparameters:\n"
                   f"  rescale: true\nmodels:\n"
                   + "".join(f"  - model: {p}\n    parameters: {{weight: 0.5, density: 0.6}}\n"
                             for p in paths[1:]))
    return cfg


@pytest.mark.parametrize("device", DEVICES)
def test_cli_config_runs_on_the_device(tmp_path, device):
    paths = _method_models(tmp_path, 2, "BF16")
    cfg = _recipe(tmp_path, paths)
    for dev in (device, "cpu"):
        out = tmp_path / f"{dev}.safetensors"
        assert cli.main(["merge", "--config", str(cfg), "-o", str(out), "--device", dev,
                         "--quiet"]) == 0
    assert (tmp_path / f"{device}.safetensors").read_bytes() == \
        (tmp_path / "cpu.safetensors").read_bytes()


def test_methods_on_an_unusable_cuda_device_are_a_clear_backend_error(tmp_path, capsys):
    """Runs everywhere: without a GPU every CUDA device is unusable, with one an index
    past the last; nothing is written and the CLI prints one line, exit status 2."""
    bad = f"cuda:{INFO['device_count']}" if HAVE_GPU else "cuda"
    a = write_raw(tmp_path / "a.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    b = write_raw(tmp_path / "b.safetensors", {"w": ("F32", [3], b"\0" * 12)})
    out = tmp_path / "o.safetensors"
    with pytest.raises(ladle.BackendError, match=f"device '{bad}' requested but"):
        ladle.methods.methods.ties(a, [b], out, weights=[1.0], device=bad, progress=False)
    with pytest.raises(ladle.BackendError, match=f"device '{bad}' requested but"):
        ladle.methods.methods.merge_models("slerp", [b], out, base_model=a, parameters={"t": 0.5},
                                   device=bad, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    capsys.readouterr()
    rc = cli.main(["merge", "--config", str(_recipe(tmp_path, [a, b])), "-o", str(out),
                   "--device", bad, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("ladle: error:") and bad in err[0]

