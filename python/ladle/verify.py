"""``ladle verify``: re-read a merged output and confirm it.

Checks, in order: structure (every header through the strict parser, the
index consistent with its shards), the CRC-32 of each shard when the index
records them (``ladle_crc32c``), optionally that every float value is finite,
and finally recomputes a sample of tensors from the inputs with the recipe
recorded in ``__metadata__`` (``ladle_inputs``, ``ladle_weights``,
``ladle_int_policy``) or given explicitly, comparing bytes exactly.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _core
from .checkpoint import INDEX_NAME, Checkpoint, open_checkpoint
from .errors import FormatError, LadleValueError
from .output import file_crc32c
from .plan import check_int_policy, nonfloat_inputs


@dataclass
class VerifyReport:
    """What ``verify`` checked and every problem it found."""

    path: Path
    n_tensors: int = 0
    n_files: int = 0
    checksums_checked: int = 0
    tensors_recomputed: int = 0
    tensors_scanned_finite: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(out: str | os.PathLike, inputs: list[str] | None = None,
           weights: list[float] | None = None, sample: int = 8, check_finite: bool = False,
           seed: int = 0) -> VerifyReport:
    """Verify a merged checkpoint.

    Args:
        out: the merged file or directory.
        inputs, weights: the recipe; default: ``ladle_inputs``/``ladle_weights`` from
            the output's metadata. Without either, values are not recomputed.
        sample: tensors to recompute (the largest plus a seeded random choice);
            0 recomputes none, a negative number all of them.
        check_finite: scan every float tensor of the output for NaN/Inf.
        seed: seed of the random sample.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False on any mismatch.

    Raises:
        FormatError etc. when the output cannot be parsed at all.

    Example:
        >>> from ladle.verify import verify
        >>> verify("merged/").ok     # doctest: +SKIP
    """
    ckpt = open_checkpoint(out)  # structure: strict parser + index consistency
    report = VerifyReport(ckpt.path, len(ckpt.tensors), len(ckpt.file_sizes))
    _check_checksums(ckpt, report)
    if check_finite:
        _check_finite(ckpt, report)
    if inputs is None and "ladle_inputs" in ckpt.metadata:
        try:
            inputs = json.loads(ckpt.metadata["ladle_inputs"])
        except ValueError:
            raise FormatError(f"{ckpt.path}: metadata ladle_inputs is not JSON") from None
    if weights is None and "ladle_weights" in ckpt.metadata:
        try:
            weights = json.loads(ckpt.metadata["ladle_weights"])
        except ValueError:
            raise FormatError(f"{ckpt.path}: metadata ladle_weights is not JSON") from None
    if inputs is not None and weights is not None and sample != 0:
        if len(inputs) != len(weights):
            raise LadleValueError(f"{len(weights)} weight(s) for {len(inputs)} input(s)")
        # Outputs written before int policies existed required identical integer
        # tensors, which "first" reproduces.
        policy = check_int_policy(ckpt.metadata.get("ladle_int_policy", "first"))
        _recompute(ckpt, [open_checkpoint(p) for p in inputs], [float(w) for w in weights],
                   sample, seed, report, policy)
    return report


def _check_checksums(ckpt: Checkpoint, report: VerifyReport) -> None:
    index = ckpt.path / INDEX_NAME if ckpt.path.is_dir() else None
    if index is None or not index.is_file():
        return
    recorded = json.loads(index.read_bytes()).get("metadata", {}).get("ladle_crc32c", {})
    if not isinstance(recorded, dict):
        report.problems.append(f"{index}: metadata ladle_crc32c is not an object")
        return
    for name, crc in sorted(recorded.items()):
        shard = ckpt.path / name
        if shard not in ckpt.file_sizes:
            report.problems.append(f"{index}: checksum recorded for unknown shard {name!r}")
            continue
        got = file_crc32c(shard)
        report.checksums_checked += 1
        if got != crc:
            report.problems.append(f"{shard}: CRC-32 {got} differs from {crc} recorded in "
                                   f"{INDEX_NAME}")


_FLOAT_VIEWS = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def _read(file: Path, offset: int, n_bytes: int) -> bytes:
    with open(file, "rb") as f:
        f.seek(offset)
        data = f.read(n_bytes)
    if len(data) != n_bytes:
        raise FormatError(f"{file}: short read of {n_bytes} bytes at offset {offset}")
    return data


def _first_nonfinite(dtype: str, data: bytes) -> int | None:
    if dtype == "BF16":
        bits = np.frombuffer(data, np.uint16)
        bad = np.flatnonzero((bits & 0x7F80) == 0x7F80)
    elif dtype in _FLOAT_VIEWS:
        bad = np.flatnonzero(~np.isfinite(np.frombuffer(data, _FLOAT_VIEWS[dtype])))
    else:
        return None
    return int(bad[0]) if bad.size else None


def _check_finite(ckpt: Checkpoint, report: VerifyReport) -> None:
    for t in ckpt.tensors.values():
        if not _core.dtype_is_mergeable(t.dtype):
            continue
        report.tensors_scanned_finite += 1
        bad = _first_nonfinite(t.dtype, _read(t.file, t.offset, t.n_bytes))
        if bad is not None:
            report.problems.append(f"{t.file}: tensor '{t.name}': non-finite value (NaN or Inf) "
                                   f"at element {bad}")


def _recompute(out: Checkpoint, ckpts: list[Checkpoint], weights: list[float], sample: int,
               seed: int, report: VerifyReport, int_policy: str = "first") -> None:
    names = list(out.tensors)
    if 0 <= sample < len(names):
        largest = max(names, key=lambda n: out.tensors[n].n_bytes)
        rest = [n for n in names if n != largest]
        names = [largest, *random.Random(seed).sample(rest, min(sample - 1, len(rest)))]
    for name in names:
        t = out.tensors[name]
        missing = [str(c.path) for c in ckpts if name not in c.tensors]
        if missing:
            report.problems.append(f"tensor '{name}': absent from input(s) {missing}")
            continue
        infos = [c.tensors[name] for c in ckpts]
        want = np.zeros(t.n_bytes, np.uint8)
        plan = _core.Plan()
        sink = plan.add_memory_sink("recomputed", want.ctypes.data, t.n_bytes)
        sources: dict[Path, int] = {}
        for info in infos:
            if info.file not in sources:
                size = next(c.file_sizes[info.file] for c in ckpts if info.file in c.file_sizes)
                sources[info.file] = plan.add_file_source(str(info.file), size)
        if _core.dtype_is_mergeable(infos[0].dtype):
            job_inputs = [(sources[i.file], i.offset, i.dtype, w) for i, w in zip(infos, weights)]
            plan.add_job(name, "sum", t.n_elems, sink, 0, t.dtype, job_inputs)
        else:
            op, chosen = nonfloat_inputs(infos, weights, int_policy)
            dtype, n = (t.dtype, t.n_elems) if _core.dtype_n_bits(t.dtype) % 8 == 0 else \
                ("U8", t.n_bytes)
            plan.add_job(name, op, n, sink, 0, dtype,
                         [(sources[i.file], i.offset, dtype, 1.0) for i in chosen])
        _core.run(plan, threads=1)
        got = np.frombuffer(_read(t.file, t.offset, t.n_bytes), np.uint8)
        report.tensors_recomputed += 1
        if not np.array_equal(got, want):
            byte = int(np.flatnonzero(got != want)[0])
            item = max(1, _core.dtype_n_bits(t.dtype) // 8)
            report.problems.append(f"{t.file}: tensor '{name}': element {byte // item} differs "
                                   f"from the value recomputed from the inputs")
