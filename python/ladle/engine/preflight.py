"""Pre-flight check of a merge from headers and index files only (``ladle check``,
``ladle merge --dry-run``): missing, extra and mismatched tensors, the dtype plan
per tensor, FP8 scale companions, the output size against the free disk space at
the destination, and the files that will be open at once. No tensor byte is read.
"""

from __future__ import annotations

import os
import resource
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import _core
from ..errors import LadleValueError
from ..formats.checkpoint import Checkpoint, _preview
from ..formats.dtype_rules import fp8_scale_pairs, widest_dtype
from .fp8_blocks import FP8_BLOCKS, block_scales, check_dequantized_dtype
from .plan import normalize_dtype


@dataclass
class Preflight:
    """What a merge of these checkpoints would do, and what stops it."""

    problems: list[str] = field(default_factory=list)
    dtype_plan: Counter = field(default_factory=Counter)  # "F16+F32 -> F32" -> count
    scale_pairs: list[tuple[str, str]] = field(default_factory=list)
    output_n_bytes: int = 0
    free_n_bytes: int | None = None
    files_open: int = 0
    files_limit: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"dtype plan: {n} tensor(s) {plan}" for plan, n in sorted(self.dtype_plan.items())]
        if self.scale_pairs:
            lines.append(f"FP8 scale pairs: {len(self.scale_pairs)} "
                         f"({_preview([f'{w} + {s}' for w, s in self.scale_pairs], 3)})")
        free = "unknown" if self.free_n_bytes is None else f"{self.free_n_bytes} bytes free"
        lines.append(f"output: {self.output_n_bytes} bytes; destination: {free}")
        lines.append(f"files open at once: {self.files_open} (limit {self.files_limit})")
        lines += [f"problem: {p}" for p in self.problems]
        lines.append("ok" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def preflight(ckpts: list[Checkpoint], dtype: str | None = None,
              out: str | os.PathLike | None = None) -> Preflight:
    """Check ``ckpts`` for a merge into ``out`` (optional) without reading tensor data.

    Example:
        >>> print(preflight([ladle.open("a/"), ladle.open("b/")]).text())  # doctest: +SKIP
    """
    report = Preflight()
    out_dtype = normalize_dtype(dtype, block_fp8=True)
    first = ckpts[0]
    for ckpt in ckpts[1:]:
        missing = sorted(set(first.tensors) - set(ckpt.tensors))
        extra = sorted(set(ckpt.tensors) - set(first.tensors))
        if missing:
            report.problems.append(f"{ckpt.path}: missing {len(missing)} tensor(s) of "
                                   f"{first.path}: {_preview(missing)}")
        if extra:
            report.problems.append(f"{ckpt.path}: {len(extra)} extra tensor(s) not in "
                                   f"{first.path}: {_preview(extra)}")
    report.scale_pairs = fp8_scale_pairs(first.tensors)
    scaled: dict = {}
    try:
        scaled = {w: check_dequantized_dtype(out_dtype, c, w)
                  for c in ckpts for w in block_scales(c)}
    except LadleValueError as e:  # a layout ladle does not dequantize (yet)
        report.problems.append(str(e))
    scale_names = {s for _, s in report.scale_pairs}
    scale_of = dict(report.scale_pairs)
    for name, t in first.tensors.items():
        if name in scale_names:
            continue  # applied to its weight, never merged or written
        infos = [c.tensors[name] for c in ckpts if name in c.tensors]
        shapes = {i.shape for i in infos}
        if len(shapes) > 1:
            report.problems.append(f"tensor '{name}': shapes differ: "
                                   f"{sorted(list(s) for s in shapes)}")
        dtypes = sorted({i.dtype for i in infos})
        if name in scaled:
            fresh = out_dtype == FP8_BLOCKS  # the scales are written again
            report.dtype_plan[f"{'+'.join(dtypes)} (block-scaled, dequantized) -> "
                              f"{scaled[name]}{' + fresh scales' if fresh else ''}"] += 1
            report.output_n_bytes += t.n_elems * _core.dtype_n_bits(scaled[name]) // 8
            if fresh and name in scale_of:
                report.output_n_bytes += first.tensors[scale_of[name]].n_bytes
        elif all(_core.dtype_is_mergeable(d) for d in dtypes):
            odt = (None if out_dtype == FP8_BLOCKS else out_dtype) or widest_dtype(dtypes)
            report.dtype_plan[f"{'+'.join(dtypes)} -> {odt}"] += 1
            report.output_n_bytes += t.n_elems * _core.dtype_n_bits(odt) // 8
        elif len(dtypes) > 1:
            report.problems.append(f"tensor '{name}': dtypes {dtypes} differ and are not all "
                                   f"float")
        else:
            report.dtype_plan[f"{dtypes[0]} copied"] += 1
            report.output_n_bytes += t.n_bytes
    n_out_files = max(1, -(-report.output_n_bytes // (5 * 10**9)))
    report.files_open = len({f for c in ckpts for f in c.files}) + n_out_files
    report.files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if report.files_open > report.files_limit:
        report.problems.append(f"{report.files_open} files must be open at once, the limit "
                               f"(ulimit -n) is {report.files_limit}")
    if out is not None:
        dest = Path(out).absolute()
        while not dest.exists():
            dest = dest.parent
        report.free_n_bytes = shutil.disk_usage(dest).free
        if report.output_n_bytes > report.free_n_bytes:
            report.problems.append(f"{out}: the output needs {report.output_n_bytes} bytes, "
                                   f"{report.free_n_bytes} are free")
    return report
