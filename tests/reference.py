"""The arithmetic contract written plainly in numpy, independent of ladle:

    acc = fp32(w1 * x1); acc = fp32(acc + fp32(wk * xk)) for k = 2..N (zero weights skipped)
    out = round-to-nearest-even(acc) in the output dtype, NaN -> canonical quiet NaN

Tensors are handled as raw little-endian bytes so BF16 needs no numpy dtype.
"""

from __future__ import annotations

import numpy as np

ITEM = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
CANONICAL_NAN = {"F32": 0x7FC00000, "F16": 0x7E00, "BF16": 0x7FC0}


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
    raise ValueError(dtype)


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
    raise ValueError(dtype)


def combine(raws: list[bytes], dtypes: list[str], weights: list[float], out_dtype: str,
            scale: float = 1.0) -> bytes:
    """Reference weighted sum of raw tensors under the contract."""
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
    if dtype == "F64":
        return x.astype(np.float64).tobytes()
    return from_f32(x, dtype)
