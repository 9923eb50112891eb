"""The arithmetic contract written plainly in numpy, independent of ladle:

    acc = fp32(w1 * x1); acc = fp32(acc + fp32(wk * xk)) for k = 2..N (zero weights skipped)
    out = round-to-nearest-even(acc) in the output dtype, NaN -> canonical quiet NaN

A job with an F64 input or output runs the same steps in fp64 (weights rounded
to fp64 once, i.e. used as given); a narrower output is rounded via fp32.
FP8 (E4M3 "fn", E5M2) is encoded here by searching the table of all 256 codes,
independently of the bit tricks in csrc/dtype.cc.

Tensors are handled as raw little-endian bytes so BF16 needs no numpy dtype.
"""

from __future__ import annotations

import numpy as np

ITEM = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
CANONICAL_NAN = {"F32": 0x7FC00000, "F16": 0x7E00, "BF16": 0x7FC0, "F8_E4M3": 0x7F,
                 "F8_E5M2": 0x7F}
# (exponent bits, mantissa bits, has Inf) of the FP8 formats.
FP8 = {"F8_E4M3": (4, 3, False), "F8_E5M2": (5, 2, True)}


def fp8_values(dtype: str) -> np.ndarray:
    """float64 value of each of the 256 codes (NaN codes as NaN)."""
    n_exp, n_man, has_inf = FP8[dtype]
    bias = 2 ** (n_exp - 1) - 1
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> n_man) & (2 ** n_exp - 1)
    man = codes & (2 ** n_man - 1)
    mag = np.where(exp == 0, man / 2 ** n_man * 2.0 ** (1 - bias),
                   (1 + man / 2 ** n_man) * 2.0 ** (exp - bias))
    top = exp == 2 ** n_exp - 1
    if has_inf:
        mag = np.where(top & (man == 0), np.inf, np.where(top, np.nan, mag))
    else:
        mag = np.where(top & (man == 2 ** n_man - 1), np.nan, mag)
    return sign * mag


def fp8_encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """Nearest code, ties to the even code; overflow as torch's casts: E4M3 saturates
    (|x| > 448, Inf included, -> ±448), E5M2 overflows to ±Inf from 61440; NaN -> 0x7F."""
    with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
        x = np.asarray(x, np.float64)
    table = fp8_values(dtype)
    pos = np.flatnonzero((np.arange(256) < 0x80) & np.isfinite(table))
    vals, codes = table[pos], pos
    order = np.argsort(vals)
    vals, codes = vals[order], codes[order]
    mag = np.abs(x)
    hi = np.clip(np.searchsorted(vals, mag), 1, len(vals) - 1)
    lo = hi - 1
    d_lo, d_hi = mag - vals[lo], vals[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
    out = np.where(pick_hi, codes[hi], codes[lo])
    top = vals[-1]
    if dtype == "F8_E5M2":  # the tie above the top rounds to the even code: Inf
        out = np.where(mag >= top + (top - vals[-2]) / 2, 0x7C, out)
    else:
        out = np.where(mag > top, codes[-1], out)
    out = out | np.where(np.signbit(x), 0x80, 0)
    return np.where(np.isnan(x), 0x7F, out).astype(np.uint8)


def to_f32(raw: bytes | np.ndarray, dtype: str) -> np.ndarray:
    """Decode raw bytes of `dtype` to float32 (exact for F16/BF16)."""
    buf = np.frombuffer(bytes(raw), dtype=np.uint8)
    if dtype == "F32":
        return buf.view(np.float32).copy()
    if dtype == "F16":
        return buf.view(np.float16).astype(np.float32)
    if dtype == "BF16":
        return (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F64":
        return buf.view(np.float64).astype(np.float32)
    if dtype in FP8:
        return fp8_values(dtype)[buf].astype(np.float32)
    raise ValueError(dtype)


def to_f64(raw: bytes | np.ndarray, dtype: str) -> np.ndarray:
    """Decode raw bytes of `dtype` to float64 (exact for every float dtype)."""
    if dtype == "F64":
        return np.frombuffer(bytes(raw), dtype=np.float64).copy()
    return to_f32(raw, dtype).astype(np.float64)


def from_f32(acc: np.ndarray, dtype: str) -> bytes:
    """Round float32 values to `dtype` (nearest even) with canonical NaNs."""
    acc = np.asarray(acc, dtype=np.float32)
    nan = np.isnan(acc)
    if dtype == "F32":
        bits = acc.view(np.uint32).copy()
        bits[nan] = CANONICAL_NAN["F32"]
        return bits.tobytes()
    if dtype == "F16":
        with np.errstate(over="ignore"):
            bits = acc.astype(np.float16).view(np.uint16).copy()
        bits[nan] = CANONICAL_NAN["F16"]
        return bits.tobytes()
    if dtype == "BF16":
        u = acc.view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        bits[nan] = CANONICAL_NAN["BF16"]
        return bits.tobytes()
    if dtype == "F64":
        out = acc.astype(np.float64)
        out[nan] = np.float64(np.float32(np.nan))
        return out.tobytes()
    if dtype in FP8:
        return fp8_encode(acc, dtype).tobytes()
    raise ValueError(dtype)


def combine(raws: list[bytes], dtypes: list[str], weights: list[float], out_dtype: str,
            scale: float = 1.0) -> bytes:
    """Reference weighted sum of raw tensors under the contract."""
    if "F64" in (out_dtype, *(d for d, w in zip(dtypes, weights) if w != 0)):
        return _combine_f64(raws, dtypes, weights, out_dtype, scale)
    acc = None
    with np.errstate(over="ignore", invalid="ignore"):
        for raw, dtype, w in zip(raws, dtypes, weights):
            w32 = np.float32(w)
            if w32 == 0:
                continue
            product = w32 * to_f32(raw, dtype)
            acc = product if acc is None else (acc + product).astype(np.float32)
        n = len(raws[0]) // ITEM[dtypes[0]]
        if acc is None:
            acc = np.zeros(n, dtype=np.float32)
        if scale != 1.0:
            acc = (acc * np.float32(scale)).astype(np.float32)
    return from_f32(acc, out_dtype)


def _combine_f64(raws: list[bytes], dtypes: list[str], weights: list[float], out_dtype: str,
                 scale: float) -> bytes:
    acc = np.zeros(len(raws[0]) // ITEM[dtypes[0]], dtype=np.float64)
    first = True
    with np.errstate(over="ignore", invalid="ignore"):
        for raw, dtype, w in zip(raws, dtypes, weights):
            if float(w) == 0:
                continue
            product = np.float64(w) * to_f64(raw, dtype)
            acc = product if first else acc + product
            first = False
        if scale != 1.0:
            acc = acc * np.float64(np.float32(scale))
        if out_dtype == "F64":
            out = acc.copy()
            out[np.isnan(out)] = np.float64(np.float32(np.nan))
            return out.tobytes()
        return from_f32(acc.astype(np.float32), out_dtype)


def random_raw(rng: np.random.Generator, n: int, dtype: str, special: bool = False) -> bytes:
    """Random normal-ish values of `dtype` as bytes; optionally with Inf/NaN/subnormals."""
    x = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 100.0])).astype(np.float32)
    if special and n:
        specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, 6e-8, 65504.0, 3e38],
                            dtype=np.float32)
        idx = rng.integers(0, n, size=max(1, n // 10))
        x[idx] = rng.choice(specials, size=idx.size)
    if dtype == "F32":
        return x.tobytes()
    if dtype == "F64":  # values that need fp64: x plus a part below fp32's precision
        return (x.astype(np.float64) * (1 + rng.standard_normal(n) * 2.0 ** -30)).tobytes()
    return from_f32(x, dtype)
