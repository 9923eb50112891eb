"""The greedy soup's fp32 running sums: two buffers shaped like the model's float
tensors (the accepted sum S and the tentative S + θ_i), kept in RAM when both fit
the budget and otherwise in fp32 files on disk (memory-mapped, written back by the
kernel), each exposed to the engine as a tensor set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import LadleValueError
from ..formats.sources import TensorRef, TensorSet, from_tensors


class Accumulators:
    """Two fp32 buffers holding one value per element of the given tensors.

    Args:
        names_shapes: (name, shape) of every float tensor to accumulate.
        budget: bytes allowed in RAM for both buffers together.
        mode: ``"auto"`` (RAM when within budget), ``"ram"`` or ``"disk"``.
        directory: where disk buffers go (default: a temporary directory).

    Example:
        >>> acc = Accumulators([("w", (2, 3))], budget=1 << 20)
        >>> acc.in_ram, acc.sets[0].tensors["w"].dtype
        (True, 'F32')
    """

    def __init__(self, names_shapes: Sequence[tuple[str, tuple[int, ...]]], budget: int,
                 mode: str = "auto", directory: str | os.PathLike | None = None):
        if mode not in ("auto", "ram", "disk"):
            raise LadleValueError(f"accumulator mode must be auto, ram or disk, not {mode!r}")
        self.names_shapes = [(n, tuple(s)) for n, s in names_shapes]
        self.n_elems = sum(int(np.prod(s, dtype=np.int64)) for _, s in self.names_shapes)
        self.n_bytes = 8 * self.n_elems  # both buffers
        self.in_ram = mode == "ram" or (mode == "auto" and self.n_bytes <= budget)
        self._tmp: Path | None = None
        if not self.in_ram:
            self._tmp = Path(tempfile.mkdtemp(prefix="ladle-soup-", dir=directory))
        self.buffers: list[np.ndarray] = []
        self.sets: list[TensorSet] = []
        for i in range(2):
            if self.in_ram:
                buf = np.zeros(max(1, self.n_elems), dtype=np.float32)
            else:
                buf = np.memmap(self._tmp / f"sum{i}.f32", dtype=np.float32, mode="w+",
                                shape=(max(1, self.n_elems),))
            self.buffers.append(buf)
            self.sets.append(self._as_set(buf, f"<fp32 running sum {i}>"))

    def _as_set(self, buf: np.ndarray, label: str) -> TensorSet:
        whole = from_tensors(label, {"": buf})
        key = whole.tensors[""].source
        refs, offset = {}, 0
        for name, shape in self.names_shapes:
            n_bytes = 4 * int(np.prod(shape, dtype=np.int64))
            refs[name] = TensorRef(name, "F32", shape, key, offset, n_bytes, label)
            offset += n_bytes
        return TensorSet(label, refs, whole.sources, [buf])

    def close(self) -> None:
        """Drop the buffers and remove disk files."""
        self.buffers = []
        self.sets = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
