"""Blocks of rows of a planned tensor's inputs as fp32 numpy arrays, read through a
shard's engine plan, and fp32 output blocks written back through it.

For methods whose statistics do not fit the engine's kernels (arcee_fusion's
quantiles, nuslerp's column-wise SLERP): the engine converts each block's bytes to
fp32 exactly (a weighted sum with weight 1 into a memory sink) and releases the
mapped pages behind it; an output block goes back as a weighted sum from a memory
source into the shard, rounded to the output dtype there (round-to-nearest-even).
A block holds at most ``memory_budget / 2 / bytes_per_elem`` elements, so memory
stays within the budget whatever the tensor's size; a single row that does not
fit is a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _core
from ..errors import LadleValueError

BLOCK_ROWS_MAX = 1 << 16  # rows per block at most (a cap on each engine run's size)


class RowStream:
    """Rows of ``cols`` elements of tensor ``t``'s inputs (``t.inputs`` order).

    Args:
        core_plan, sources: the shard's engine plan and its file sources.
        t: the planned tensor (name, shape, dtype, n_elems, inputs).
        sink, out_offset: where the tensor's bytes go in the shard.
        run_opts: the engine options (threads, memory_budget, chunk_elems, kernel).
        cols: elements per row; ``bytes_per_elem``: working memory per element of a
            block (inputs and the caller's temporaries), which sizes the blocks.
        label: the method, for the error message.
    """

    def __init__(self, core_plan: Any, sources: dict, t: Any, sink: int, out_offset: int,
                 run_opts: dict, cols: int, bytes_per_elem: int, label: str) -> None:
        self.plan, self.sources, self.t = core_plan, sources, t
        self.sink, self.out_offset, self.run_opts = sink, out_offset, run_opts
        self.cols = max(cols, 1)
        self.n_rows = t.n_elems // self.cols
        per_row = self.cols * bytes_per_elem
        half = run_opts["memory_budget"] // 2
        if per_row > half:
            raise LadleValueError(
                f"{label}: tensor '{t.name}': a row of {self.cols} elements needs {per_row} "
                f"bytes of working memory, over half the memory budget "
                f"({run_opts['memory_budget']} bytes); raise --memory-budget")
        self.rows_per_block = max(1, min(self.n_rows, BLOCK_ROWS_MAX, half // per_row))
        self.stats: dict = {"bytes_read": 0, "threads": 0, "chunk_elems": 0, "kernel": ""}

    def blocks(self) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(first row, [fp32 array [rows, cols] per input]) of every block, in order."""
        for first in range(0, self.n_rows, self.rows_per_block):
            rows = min(self.rows_per_block, self.n_rows - first)
            yield first, [self._read(info, first, rows) for info, _ in self.t.inputs]

    def write(self, first: int, values: np.ndarray) -> None:
        """Write fp32 ``values`` (whole rows from row ``first``) into the shard."""
        out = np.ascontiguousarray(values, dtype=np.float32).ravel()
        item = _core.dtype_n_bits(self.t.dtype) // 8
        src = self.plan.add_memory_source(f"{self.t.name}:out", out.ctypes.data, out.nbytes)
        self.plan.add_job(self.t.name, _core.JobKind.sum, out.size, self.sink,
                          self.out_offset + first * self.cols * item, self.t.dtype,
                          [_core.Input(src, 0, "F32")])
        self._run()

    def _run(self) -> None:
        stats = _core.run(self.plan, **self.run_opts)
        self.stats["bytes_read"] += stats["bytes_read"]
        for key in ("threads", "chunk_elems", "kernel"):
            self.stats[key] = stats[key] or self.stats[key]
        self.plan.clear_jobs()

    def _read(self, info: Any, first: int, rows: int) -> np.ndarray:
        n = rows * self.cols
        buf = np.empty(n, dtype=np.float32)
        sink = self.plan.add_memory_sink(f"{self.t.name}:rows", buf.ctypes.data, buf.nbytes)
        size = _core.dtype_n_bits(info.dtype) // 8
        offset = info.offset + first * self.cols * size
        self.plan.clear_jobs()
        self.plan.add_job(self.t.name, _core.JobKind.sum, n, sink, 0, "F32",
                          [_core.Input(self.sources[info.file], offset, info.dtype)])
        self._run()
        self.plan.release_source(self.sources[info.file], offset, n * size)
        return buf.reshape(rows, self.cols)
