"""FP8 (F8_E4M3 "fn", F8_E5M2): ladle's conversions against torch's casts, bit for bit,
over all 256 codes and over fp32 values covering every exponent, ties, subnormals,
overflow and Inf; NaN becomes the canonical 0x7F (torch keeps the NaN's sign)."""

from __future__ import annotations

import numpy as np
import pytest

import ladle

from reference import fp8_encode, fp8_values
from st_io import read_checkpoint, write_raw

torch = pytest.importorskip("torch")
TORCH = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _probe_values() -> np.ndarray:
    """fp32 values: every exponent with many mantissas, each code's value, the midpoints
    between neighbouring codes (ties) and one ulp either side, and the specials."""
    hi = np.arange(0, 1 << 17, dtype=np.uint32) << 15  # 2^17 patterns x 4 low parts
    bits = (hi[:, None] | np.array([0, 1, 0x3FFF, 0x4000], np.uint32)).ravel()
    x = bits.view(np.float32)
    extra = []
    for dtype in TORCH:
        v = np.unique(fp8_values(dtype)[np.isfinite(fp8_values(dtype))])
        mids = ((v[:-1] + v[1:]) / 2).astype(np.float32)
        extra += [v.astype(np.float32), mids, np.nextafter(mids, np.float32(np.inf)),
                  np.nextafter(mids, np.float32(-np.inf))]
    specials = np.array([np.inf, -np.inf, 448, 464, 464.00003, 480, 57344, 61439.996, 61440,
                         65536, 3.4e38, 2.0 ** -9, 2.0 ** -10, 2.0 ** -16, 2.0 ** -17, 0, -0.0],
                        np.float32)
    return np.concatenate([x, -x, *extra, specials, -specials]).astype(np.float32)


def _ladle_cast(tmp_path, raw: bytes, in_dtype: str, out_dtype: str, n: int) -> bytes:
    src = write_raw(tmp_path / f"{in_dtype}.safetensors", {"x": (in_dtype, [n], raw)})
    out = tmp_path / f"{in_dtype}-{out_dtype}.safetensors"
    ladle.merge([src], [1.0], out, dtype=out_dtype, progress=False)  # 1·x is exact
    return read_checkpoint(out)["x"][2]


@pytest.mark.parametrize("dtype", list(TORCH))
def test_every_code_decodes_as_torch(tmp_path, dtype):
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(TORCH[dtype]).float().numpy()
    got = np.frombuffer(_ladle_cast(tmp_path, codes.tobytes(), dtype, "F32", 256), np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert got[~nan].tobytes() == want[~nan].tobytes()
    assert set(got[nan].view(np.uint32)) <= {0x7FC00000}  # canonical
    # and back: every code (NaN codes as 0x7F) survives F32 -> FP8
    back = np.frombuffer(_ladle_cast(tmp_path, got.tobytes(), "F32", dtype, 256), np.uint8)
    assert np.array_equal(back, np.where(nan, 0x7F, codes))


@pytest.mark.parametrize("dtype", list(TORCH))
def test_fp32_to_fp8_matches_torch(tmp_path, dtype):
    x = _probe_values()
    got = np.frombuffer(_ladle_cast(tmp_path, x.tobytes(), "F32", dtype, x.size), np.uint8)
    want = torch.from_numpy(x).to(TORCH[dtype]).view(torch.uint8).numpy()
    nan = np.isnan(x)
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, f"{bad.size} values differ, first {x[bad[:5]]}: {got[bad[:5]]} " \
                          f"vs torch {want[bad[:5]]}"
    assert set(got[nan]) <= {0x7F}
    assert np.array_equal(got, fp8_encode(x, dtype))  # the numpy reference agrees too


@pytest.mark.parametrize("dtype,bad", [("F8_E4M3", 0xFF), ("F8_E5M2", 0x7C)])
def test_check_finite_sees_fp8_nan_and_inf(tmp_path, dtype, bad):
    from ladle.errors import NonFiniteError

    src = write_raw(tmp_path / "x.safetensors", {"x": (dtype, [3], bytes([0x38, bad, 0x38]))})
    with pytest.raises(NonFiniteError, match="element 1"):
        ladle.merge([src], [1.0], tmp_path / "o.safetensors", check_finite=True, progress=False)


@pytest.mark.parametrize("dtype", list(TORCH))
def test_avx2_fp8_decode_matches_scalar_and_torch(tmp_path, dtype):
    """The AVX2 table-gather decode against the scalar kernel and torch: every code in
    shuffled orders (NaN codes included), a length with a vector tail, two weights."""
    if not ladle.build_info()["avx2_cpu"]:
        pytest.skip("CPU lacks AVX2/F16C")
    rng = np.random.default_rng(7)
    n = 256 * 9 + 5
    raws = [rng.permutation(np.resize(np.arange(256, dtype=np.uint8), n)) for _ in range(2)]
    files = [write_raw(tmp_path / f"in{k}.safetensors", {"x": (dtype, [n], r.tobytes())})
             for k, r in enumerate(raws)]
    got = {}
    for kernel in ("scalar", "avx2"):
        out = tmp_path / f"{kernel}.safetensors"
        ladle.merge(files, [0.75, -1.5], out, dtype="F32", kernel=kernel, progress=False)
        got[kernel] = read_checkpoint(out)["x"][2]
    assert got["avx2"] == got["scalar"]
    x = [torch.from_numpy(r).view(TORCH[dtype]).float() for r in raws]
    want = (torch.tensor(0.75) * x[0] + torch.tensor(-1.5) * x[1]).numpy()
    mine = np.frombuffer(got["avx2"], np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(mine), nan) and mine[~nan].tobytes() == want[~nan].tobytes()
