"""Inputs of different float dtypes per tensor (F16, BF16, F32, F64, FP8) merge under
the arithmetic contract, bit for bit against tests/reference.py; F64 runs in fp64;
the default output dtype is the widest input dtype (ladle.formats.dtype_rules)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ladle
from ladle.formats.dtype_rules import widest_dtype

from reference import combine, random_raw
from st_io import read_checkpoint, read_raw, write_raw

FLOATS = ["F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2"]
SIZES = [1, 7, 2049, 40_000]


@pytest.mark.parametrize("kernel", ["scalar", "avx2"])
@pytest.mark.parametrize("out_dtype", [None, *FLOATS])
def test_mixed_inputs_match_contract(tmp_path, out_dtype, kernel):
    if kernel == "avx2" and not ladle.build_info()["avx2_cpu"]:
        pytest.skip("CPU lacks AVX2/F16C")
    _check_mixed(tmp_path, out_dtype, kernel=kernel)


@pytest.mark.parametrize("out_dtype", [None, "F8_E4M3", "F64", "BF16"])
def test_mixed_inputs_on_cuda_emulator(tmp_path, out_dtype):
    from ladle.engine.cuda import EMULATOR, cuda_info

    if not cuda_info()["compiled"]:
        pytest.skip(f"CUDA backend not built: {cuda_info()['error']}")
    _check_mixed(tmp_path, out_dtype, device=EMULATOR)


def _check_mixed(tmp_path, out_dtype: str | None, **engine) -> None:
    rng = np.random.default_rng(FLOATS.index(out_dtype) + 1 if out_dtype else 0)
    combos = [["F16", "F32"], ["BF16", "F16"], ["F32", "F64"], ["F8_E4M3", "F8_E5M2", "BF16"],
              ["F16", "F8_E4M3", "F32", "F64"]]
    paths, raws = [], []
    for k in range(4):
        tensors = {}
        for c, combo in enumerate(combos):
            for j, n in enumerate(SIZES):
                dtype = combo[k % len(combo)]
                tensors[f"c{c}.t{j}"] = (dtype, [n], random_raw(rng, n, dtype, special=True))
        paths.append(write_raw(tmp_path / f"in{k}.safetensors", tensors))
        raws.append(tensors)
    weights = [0.3, -1.25, 0.0, 1.1]
    out = tmp_path / "out.safetensors"
    ladle.merge(paths, weights, out, dtype=out_dtype, progress=False, memory_budget=1, **engine)
    got, meta = read_raw(out)
    assert meta["ladle_dtype"] == (out_dtype or "widest")
    for name in raws[0]:
        dtypes = [r[name][0] for r in raws]
        want_dtype = out_dtype or widest_dtype(dtypes)
        assert got[name][0] == want_dtype, name
        assert got[name][2] == combine([r[name][2] for r in raws], dtypes, weights,
                                       want_dtype), name
    from ladle.engine.verify import verify

    assert verify(out, sample=-1).ok


def test_widest_rule():
    assert widest_dtype(["F16", "F32"]) == "F32"
    assert widest_dtype(["BF16", "F16"]) == "F32"  # neither holds the other
    assert widest_dtype(["F8_E4M3", "F8_E5M2"]) == "F16"
    assert widest_dtype(["F8_E4M3", "BF16"]) == "BF16"
    assert widest_dtype(["F32", "F64", "F16"]) == "F64"
    assert widest_dtype(["F16"]) == "F16"


def test_f64_is_computed_in_fp64(tmp_path):
    a = write_raw(tmp_path / "a.safetensors",
                  {"x": ("F64", [3], np.array([1e300, 0.1, 1e-310]).tobytes())})
    b = write_raw(tmp_path / "b.safetensors",
                  {"x": ("F64", [3], np.array([1e300, 0.1, 1e-310]).tobytes())})
    out = tmp_path / "out.safetensors"
    ladle.merge([a, b], [0.5, 0.5], out, progress=False)
    got = np.frombuffer(read_checkpoint(out)["x"][2], np.float64)
    assert got.tolist() == [0.5 * 1e300 + 0.5 * 1e300, 0.1, 0.5 * 1e-310 + 0.5 * 1e-310]
    # weights keep fp64 precision: 0.1 is not rounded to fp32's 0.10000000149
    ladle.merge([a], [0.1], out, progress=False, overwrite=True)
    assert np.frombuffer(read_checkpoint(out)["x"][2], np.float64)[1] == 0.1 * 0.1


def test_fp16_with_fp32_from_cli(tmp_path):
    from ladle.cli.cli import main

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    a = write_raw(tmp_path / "zs16.safetensors", {"w": ("F16", [4, 5], w.astype(np.float16)
                                                         .tobytes())})
    b = write_raw(tmp_path / "ft32.safetensors", {"w": ("F32", [4, 5], w.tobytes())})
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "out"),
                 "--quiet"]) == 0
    got, meta = read_raw(tmp_path / "out" / "model.safetensors")
    assert got["w"][0] == "F32"
    assert got["w"][2] == combine([read_checkpoint(a)["w"][2], w.tobytes()], ["F16", "F32"],
                                  [0.5, 0.5], "F32")
    assert json.loads(meta["ladle_weights"]) == [0.5, 0.5]
    assert main(["verify", str(tmp_path / "out")]) == 0
