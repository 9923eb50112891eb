"""mergekit's nuslerp with ``nuslerp_row_wise: true, nuslerp_flatten: false``: SLERP
of the vectors along dimension 0 (the columns of a 2-D weight, strided in memory).

A tensor of shape ``[r, …]`` is ``r`` storage rows of ``m = n/r`` elements; column
``j`` is element ``j`` of every storage row. One streamed pass over blocks of rows
accumulates the per-column fp64 sums ``g00, g01, g11`` (products in fp64, rows added
in index order one after the other, so block sizes cannot change a bit); the
per-column coefficients follow as in nuslerp; a second pass writes each block. Memory:
a block of rows (sized from the budget) plus 5 fp64 numbers per column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.row_stream import RowStream

_BYTES_PER_ELEMENT = 80  # a block's fp32 inputs and deltas, fp64 copies, temporaries


def column_coefficients(t: float, g00: np.ndarray, g01: np.ndarray, g11: np.ndarray,
                        eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """fp32 ``(c0, c1)`` per column: nuslerp's ``n_k = max(√g_kk, 1e-7)``,
    ``θ = acos(clamp(g01/(n0·n1), −1, 1))``, the lerp ``(1 − t, t)`` where
    ``|sin θ| < eps``, else ``sin((1 − t)θ)/sin θ`` and ``sin(tθ)/sin θ`` (fp64)."""
    n0 = np.maximum(np.sqrt(g00), 1e-7)
    n1 = np.maximum(np.sqrt(g11), 1e-7)
    theta = np.arccos(np.clip(g01 / (n0 * n1), -1.0, 1.0))
    s = np.sin(theta)
    lerp = np.abs(s) < eps
    with np.errstate(all="ignore"):
        c0 = np.where(lerp, 1.0 - t, np.sin((1 - t) * theta) / s)
        c1 = np.where(lerp, t, np.sin(t * theta) / s)
    return c0.astype(np.float32), c1.astype(np.float32)


def _vectors(arrays: list[np.ndarray], has_base: bool) -> list[np.ndarray]:
    if not has_base:
        return arrays
    with np.errstate(all="ignore"):
        return [(x - arrays[0]).astype(np.float32) for x in arrays[1:]]


def run_nuslerp_columns(core_plan: Any, sources: dict, t: Any, sink: int, out_offset: int,
                        run_opts: dict) -> dict:
    """Write nuslerp tensor ``t`` (inputs: [base,] model 1, model 2; ``t.params``:
    ``t``, ``has_base``) SLERPed column by column at ``out_offset`` of ``sink``."""
    cols = t.n_elems // t.shape[0]
    stream = RowStream(core_plan, sources, t, sink, out_offset, run_opts, cols,
                       _BYTES_PER_ELEMENT, "nuslerp")
    has_base = t.params["has_base"]
    g00, g01, g11 = (np.zeros(stream.cols) for _ in range(3))
    for _, arrays in stream.blocks():
        v0, v1 = (v.astype(np.float64) for v in _vectors(arrays, has_base))
        for a, b in zip(v0, v1):  # row after row: the sums' order never depends on blocks
            g00 += a * a
            g01 += a * b
            g11 += b * b
    c0, c1 = column_coefficients(t.params["t"], g00, g01, g11)
    for first, arrays in stream.blocks():
        v0, v1 = _vectors(arrays, has_base)
        with np.errstate(all="ignore"):
            if has_base:  # base + ((+0 + fp32(c0·δ0)) + fp32(c1·δ1)), the task order
                mixed = arrays[0] + ((np.float32(0) + c0 * v0) + c1 * v1)
            else:
                mixed = c0 * v0 + c1 * v1
        stream.write(first, mixed)
    return stream.stats
