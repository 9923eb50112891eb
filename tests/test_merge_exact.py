"""Bit-exact equality of ladle's merges with the contract reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ladle

from reference import combine, random_raw
from st_io import read_checkpoint, write_raw, write_sharded

DTYPES = ["F32", "F16", "BF16"]
SIZES = [0, 1, 7, 2049, 40_000]  # 40k > the 16k-element minimum chunk: crosses chunks


def _make_inputs(tmp_path, rng, n_inputs, dtype, sizes, special=False):
    paths, raws = [], []
    for k in range(n_inputs):
        tensors = {}
        for j, n in enumerate(sizes):
            shape = [] if n == 1 and j % 2 else [n]
            tensors[f"t{j}"] = (dtype, shape, random_raw(rng, n, dtype, special))
        paths.append(write_raw(tmp_path / f"in{k}.safetensors", tensors))
        raws.append(tensors)
    return paths, raws


@pytest.mark.parametrize("kernel", ["scalar", "avx2"])
@pytest.mark.parametrize("in_dtype,out_dtype", list(itertools.product(DTYPES, DTYPES)))
def test_weighted_sum_matches_contract(tmp_path, in_dtype, out_dtype, kernel):
    if kernel == "avx2" and not ladle.build_info()["avx2_cpu"]:
        pytest.skip("CPU lacks AVX2/F16C")
    rng = np.random.default_rng(DTYPES.index(in_dtype) * 3 + DTYPES.index(out_dtype))
    for n_inputs in (1, 2, 3, 8):
        (tmp_path / f"n{n_inputs}").mkdir()
        paths, raws = _make_inputs(tmp_path / f"n{n_inputs}", rng, n_inputs, in_dtype, SIZES,
                                   special=True)
        weights = list(rng.uniform(-1.5, 1.5, n_inputs))
        weights[0] = 0.0 if n_inputs > 2 else weights[0]  # zero weights skip their input
        out = tmp_path / f"n{n_inputs}" / "out.safetensors"
        ladle.merge(paths, weights, out, dtype=out_dtype, kernel=kernel, progress=False,
                    memory_budget=1)  # smallest chunks: many chunk boundaries
        got = read_checkpoint(out)
        for name in raws[0]:
            expected = combine([r[name][2] for r in raws], [in_dtype] * n_inputs, weights,
                               out_dtype)
            assert got[name][0] == out_dtype
            assert got[name][1] == raws[0][name][1]
            assert got[name][2] == expected, f"{name} ({n_inputs} inputs)"


@pytest.mark.parametrize("dtype", DTYPES)
def test_endpoints_bit_exact_with_inf(tmp_path, dtype):
    rng = np.random.default_rng(1)
    (paths, raws) = _make_inputs(tmp_path, rng, 2, dtype, [40_000, 5], special=True)
    for alpha, source in ((0.0, 0), (1.0, 1)):
        out = tmp_path / f"alpha{alpha}.safetensors"
        ladle.interpolate(paths[0], paths[1], alpha, out, progress=False)
        got = read_checkpoint(out)
        for name, (_, _, raw) in raws[source].items():
            assert got[name][2] == raw


def test_noncanonical_nan_becomes_canonical(tmp_path):
    raw = np.array([0xFFC1, 0x7F81, 0x3F80], dtype=np.uint16).tobytes()  # -qNaN, sNaN, 1.0
    a = write_raw(tmp_path / "a.safetensors", {"x": ("BF16", [3], raw)})
    out = tmp_path / "o.safetensors"
    ladle.merge([a], [1.0], out, progress=False)
    bits = np.frombuffer(read_checkpoint(out)["x"][2], dtype=np.uint16)
    assert bits.tolist() == [0x7FC0, 0x7FC0, 0x3F80]


def test_soup_weights_normalised_and_uniform(tmp_path):
    rng = np.random.default_rng(2)
    paths, raws = _make_inputs(tmp_path, rng, 3, "BF16", [2049])
    ladle.soup(paths, tmp_path / "u.safetensors", progress=False)
    ladle.soup(paths, tmp_path / "w.safetensors", weights=[1, 2, 5], progress=False)
    expect_u = combine([r["t0"][2] for r in raws], ["BF16"] * 3, [1 / 3] * 3, "BF16")
    expect_w = combine([r["t0"][2] for r in raws], ["BF16"] * 3, [1 / 8, 2 / 8, 5 / 8], "BF16")
    assert read_checkpoint(tmp_path / "u.safetensors")["t0"][2] == expect_u
    assert read_checkpoint(tmp_path / "w.safetensors")["t0"][2] == expect_w


def test_f64_inputs_and_output(tmp_path):
    rng = np.random.default_rng(3)
    paths, raws = _make_inputs(tmp_path, rng, 2, "F64", [1000])
    out = tmp_path / "o.safetensors"
    ladle.merge(paths, [0.25, 0.75], out, progress=False)
    expected = combine([r["t0"][2] for r in raws], ["F64", "F64"], [0.25, 0.75], "F64")
    assert read_checkpoint(out)["t0"][2] == expected


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_and_chunk_count_do_not_change_bits(tmp_path, threads):
    rng = np.random.default_rng(4)
    paths, _ = _make_inputs(tmp_path, rng, 3, "BF16", [100_003, 3])
    outs = []
    for budget in (1, "1MiB", "256MiB"):
        out = tmp_path / f"o-{threads}-{budget}.safetensors"
        ladle.merge(paths, [0.2, 0.3, 0.5], out, threads=threads, memory_budget=budget,
                    progress=False)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1] == outs[2]


def test_sharded_inputs_and_outputs(tmp_path):
    rng = np.random.default_rng(5)
    tensors = [{f"layer{i}.w": ("BF16", [64, 33], random_raw(rng, 64 * 33, "BF16"))
                for i in range(7)} for _ in range(2)]
    a = write_sharded(tmp_path / "a", tensors[0], 3)
    b = write_sharded(tmp_path / "b", tensors[1], 2)
    (tmp_path / "a" / "config.json").write_text("{}")
    report = ladle.interpolate(a, b, 0.4, tmp_path / "out", max_shard_size=10_000,
                               progress=False)
    assert report.n_shards > 1
    got = read_checkpoint(tmp_path / "out")
    for name in tensors[0]:
        expected = combine([tensors[0][name][2], tensors[1][name][2]], ["BF16"] * 2,
                           [0.6, 0.4], "BF16")
        assert got[name][2] == expected
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    assert not (tmp_path / "out.ladle-partial").exists()


def test_integer_tensors_pass_through(tmp_path):
    ids = np.arange(10, dtype=np.int64).tobytes()
    mask = np.array([1, 0, 1], dtype=np.uint8).tobytes()
    rng = np.random.default_rng(6)
    paths = [write_raw(tmp_path / f"{k}.safetensors",
                       {"ids": ("I64", [10], ids), "mask": ("BOOL", [3], mask),
                        "w": ("F32", [4], random_raw(rng, 4, "F32"))}) for k in range(2)]
    out = tmp_path / "o.safetensors"
    ladle.interpolate(paths[0], paths[1], 0.5, out, progress=False)
    got = read_checkpoint(out)
    assert got["ids"] == ("I64", [10], ids)
    assert got["mask"] == ("BOOL", [3], mask)


def test_output_loads_with_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    a = {"w": torch.randn(300, 7).to(torch.bfloat16), "b": torch.randn(5)}
    b = {"w": torch.randn(300, 7).to(torch.bfloat16), "b": torch.randn(5)}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    ladle.interpolate(tmp_path / "a.safetensors", tmp_path / "b.safetensors", 0.3,
                      tmp_path / "o.safetensors", progress=False)
    got = load_file(tmp_path / "o.safetensors")
    ref_w = (a["w"].float() * 0.7 + b["w"].float() * 0.3).to(torch.bfloat16)
    assert torch.equal(got["w"].view(torch.int16), ref_w.view(torch.int16))
    with safe_open(tmp_path / "o.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and "wise-ft" in meta["ladle_method"]
