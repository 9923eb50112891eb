"""The plan of a merge whose inputs hold the same tensors (names, dtypes, shapes):
every output tensor the weighted sum of its inputs, built, laid out in shards and
turned into engine jobs by C++ (``_core.SumTable``) without a Python object per
tensor, since checkpoints may hold 10^6 tensors. :func:`ladle.engine.plan.build_plan`
tries it first and falls back to its general path, which also words every error,
for anything else (filters, mixed dtypes, integer tensors, FP8 block scales,
differing names or shapes). The output is byte for byte that of the general path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from ..formats.checkpoint import Checkpoint
from ..formats.dtype_rules import widest_dtype


@dataclass
class SumTable:
    """A ``_core.SumTable`` and the input files its file indices stand for."""

    core: _core.SumTable
    files: list[Path]

    def add_jobs(self, core_plan: _core.Plan, shard: int, sources: dict[Path, int], sink: int,
                 header_n_bytes: int) -> None:
        """Add the jobs of shard ``shard`` to ``core_plan`` (sources: file -> source)."""
        core_plan.add_sum_table_jobs(self.core, shard, [sources[f] for f in self.files], sink,
                                     header_n_bytes)


def sum_table(checkpoints: list, weights: list[float], out_dtype: str | None,
              float_dtypes: Sequence[str]) -> SumTable | None:
    """The checkpoints' weighted sums as a :class:`SumTable`, or None when they are
    not all opened :class:`Checkpoint` files holding the same names, each with one
    dtype among ``float_dtypes`` and one shape in every input."""
    if not all(isinstance(c, Checkpoint) for c in checkpoints):
        return None
    files = list(dict.fromkeys(f for c in checkpoints for f in c.file_sizes))
    out_dtypes = {d: out_dtype or widest_dtype([d]) for d in float_dtypes}
    core = _core.sum_table([c.tensors for c in checkpoints], weights, out_dtypes,
                           {f: i for i, f in enumerate(files)})
    return None if core is None else SumTable(core, files)
