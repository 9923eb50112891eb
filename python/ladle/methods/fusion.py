"""mergekit's ``arcee_fusion``, streamed a block of rows at a time.

Per tensor, with base ``b`` and model ``x`` (rows along the last dimension; a 0-D or
1-D tensor is one row) and ``d = fp32(x − b)``:

1. per row, in fp64: ``p = softmax(x) + 1e-8``, ``q = softmax(b) + 1e-8``,
   ``kl = Σ p·log(p/q)``, rounded to fp32;
2. importance per element: ``s = fp32(|d|·kl_row)``;
3. exact order statistics of ``s`` over the whole tensor (``k = ⌊q·(n−1)⌋`` of the
   ascending order, q = 1/4, 1/2, 3/4) by a two-pass radix select on 16-bit halves
   of the fp32 bit patterns: a histogram of the high halves, then one of the low
   halves inside each chosen bucket; no sort, nothing whole-tensor in memory;
4. ``threshold = fp32(median + fp32(1.5·fp32(q3 − q1)))``;
5. ``out = rne(b + fp32(d·m))`` with ``m = 1`` where ``s ≥ threshold`` else 0.

Each pass reads the two inputs block by block through the engine (exact conversion
to fp32 into a buffer sized from the memory budget) and releases the pages behind
it; the output block goes back through the engine into the shard. Everything is
per element or per row, so neither threads nor block size change a bit. The rows'
KL values (one fp32 per row) are computed by the first pass and reused by the other
two, which then need no exp or log, while they fit an eighth of the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.row_stream import RowStream

_EPS = 1e-8
_BYTES_PER_ELEMENT = 96  # working memory per element of a block: fp32 inputs, fp64
#                          softmaxes and their temporaries, fp32/uint32 importance and keys


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys ordered as the fp32 values (negatives below positives, NaN last
    as torch.sort puts it)."""
    bits = values.astype(np.float32).view(np.uint32)
    bits = np.where(np.isnan(values), np.uint32(0x7FC00000), bits)  # one NaN, sorted last
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def _from_keys(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint32)
    bits = np.where(keys >> 31, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32)
    return bits.view(np.float32)


def row_kl(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 ``Σ p·log(p/q)`` of each row (fp64 softmaxes plus 1e-8), rows on axis 1."""
    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v.astype(np.float64) - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True) + _EPS

    with np.errstate(all="ignore"):
        p, q = softmax(x), softmax(b)
        return (p * np.log(p / q)).sum(axis=1).astype(np.float32)


def importance(x: np.ndarray, b: np.ndarray,
               kl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(d, s) of a block of rows: ``d = x − b`` and ``s = |d|·kl_row`` in fp32
    (``kl``: the rows' row_kl when already known)."""
    if kl is None:
        kl = row_kl(x, b)
    with np.errstate(all="ignore"):
        d = (x - b).astype(np.float32)
        return d, (np.abs(d) * kl[:, None]).astype(np.float32)


class RowKl:
    """The rows' KL values of one tensor, computed on the first pass and read back by
    the later ones (none kept when they would take over ``limit`` bytes)."""

    def __init__(self, n_rows: int, limit: int) -> None:
        self.values = np.empty(n_rows, np.float32) if 4 * n_rows <= limit else None
        self.known = False

    def importance(self, first: int, x: np.ndarray,
                   b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """importance() of the block of rows from row ``first``."""
        if self.values is None:
            return importance(x, b)
        rows = slice(first, first + x.shape[0])
        if not self.known:
            self.values[rows] = row_kl(x, b)
        return importance(x, b, self.values[rows])


def fusion_threshold(q1: float, median: float, q3: float) -> np.float32:
    """``median + 1.5·(q3 − q1)``, fp32 per operation."""
    f = np.float32
    with np.errstate(all="ignore"):
        return f(f(median) + f(f(1.5) * f(f(q3) - f(q1))))


def quantile_ranks(n: int) -> tuple[int, int, int]:
    """Ranks (ascending, 0-based) of q1, the median and q3: ``⌊q·(n − 1)⌋``."""
    return (n - 1) // 4, (n - 1) // 2, 3 * (n - 1) // 4


def _select(histograms, ranks: tuple[int, ...]) -> list[int]:
    """Keys of the elements of the given ranks, from a streamed key source:
    ``histograms(None)`` is the 65536-bin histogram of the keys' high halves and
    ``histograms(prefixes)`` maps each prefix to the histogram of the low halves of
    the keys whose high half it is (one pass for all the ranks)."""
    high = np.cumsum(histograms(None))
    buckets = [int(np.searchsorted(high, rank, side="right")) for rank in ranks]
    lows = histograms(sorted(set(buckets)))
    out = []
    for rank, bucket in zip(ranks, buckets):
        below = int(high[bucket - 1]) if bucket else 0
        low = np.cumsum(lows[bucket])
        out.append((bucket << 16) | int(np.searchsorted(low, rank - below, side="right")))
    return out


def _histogram(stream: RowStream, kl: RowKl, prefixes: list[int] | None) -> Any:
    """One pass: the high-half histogram of the importance keys, or per prefix the
    histogram of the low halves of the keys with that high half."""
    counts = {p: np.zeros(1 << 16, dtype=np.int64) for p in (prefixes or [None])}
    for first, (b, x) in stream.blocks():
        keys = order_keys(kl.importance(first, x, b)[1].ravel())
        for prefix, hist in counts.items():
            if prefix is None:
                hist += np.bincount(keys >> 16, minlength=1 << 16)
            else:
                hist += np.bincount(keys[(keys >> 16) == prefix] & 0xFFFF, minlength=1 << 16)
    kl.known = True
    return counts if prefixes is not None else counts[None]


def run_fusion(core_plan: Any, sources: dict, t: Any, sink: int, out_offset: int,
               run_opts: dict) -> dict:
    """Write arcee_fusion tensor ``t`` (inputs: base, model) at ``out_offset`` of
    ``sink``: three streamed passes over the inputs (see the module doc)."""
    if t.n_elems == 0:
        return {"bytes_read": 0, "threads": 0, "chunk_elems": 0, "kernel": ""}
    cols = t.shape[-1] if len(t.shape) >= 2 else t.n_elems
    stream = RowStream(core_plan, sources, t, sink, out_offset, run_opts, cols,
                       _BYTES_PER_ELEMENT, "arcee_fusion")
    kl = RowKl(stream.n_rows, run_opts["memory_budget"] // 8)
    keys = _select(lambda prefixes: _histogram(stream, kl, prefixes), quantile_ranks(t.n_elems))
    threshold = fusion_threshold(*(float(v) for v in _from_keys(keys)))
    for first, (b, x) in stream.blocks():
        d, s = kl.importance(first, x, b)
        with np.errstate(all="ignore"):
            stream.write(first, b + d * (s >= threshold).astype(np.float32))
    return stream.stats
