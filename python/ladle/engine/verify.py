"""``ladle verify``: re-read a merged output and confirm it.

Checks, in order: structure (every header through the strict parser, the
index consistent with its shards), the CRC-32 of each shard when the index
records them (``ladle_crc32c``) or of the file when a single-file output
records its own (``ladle_file_crc32c``: header and data, so a flipped bit or two
swapped tensors are caught), optionally that every float value is finite,
and finally recomputes a sample of tensors from the inputs with the recipe
recorded in ``__metadata__`` (``ladle_inputs``, ``ladle_weights``,
``ladle_int_policy``) or given explicitly, comparing bytes exactly.

A mismatch is a problem in the report (CLI exit 1); an output or recipe that
cannot be checked at all (malformed file or metadata, missing inputs) raises a
:class:`~ladle.errors.LadleError` (CLI exit 2).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _core
from ..errors import FormatError, LadleValueError
from ..formats.checkpoint import INDEX_NAME, Checkpoint, open_checkpoint
from .fp8_blocks import add_input_scales, block_scales, fresh_scale_names
from .kinds import core_enum
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
        FormatError etc. when the output or its recorded recipe cannot be read
        (cannot verify, as opposed to a mismatch); LadleIOError for missing inputs.

    Example:
        >>> from ladle.engine.verify import verify
        >>> verify("merged/").ok     # doctest: +SKIP
    """
    ckpt = open_checkpoint(out)  # structure: strict parser + index consistency
    report = VerifyReport(ckpt.path, len(ckpt.tensors), len(ckpt.file_sizes))
    _check_checksums(ckpt, report)
    _check_file_checksum(ckpt, report)
    if check_finite:
        _check_finite(ckpt, report)
    if inputs is None and "ladle_inputs" in ckpt.metadata:
        inputs = _recorded_list(ckpt, "ladle_inputs", str, "a path")
    if weights is None and "ladle_weights" in ckpt.metadata:
        weights = _recorded_list(ckpt, "ladle_weights", (int, float), "a finite number")
    if inputs is not None and weights is not None and sample != 0:
        if len(inputs) != len(weights):
            raise LadleValueError(f"{len(weights)} weight(s) for {len(inputs)} input(s)")
        # Outputs written before int policies existed required identical integer
        # tensors, which "first" reproduces.
        policy = check_int_policy(ckpt.metadata.get("ladle_int_policy", "first"))
        _recompute(ckpt, [open_checkpoint(p) for p in inputs], [float(w) for w in weights],
                   sample, seed, report, policy)
    return report


def _recorded_list(ckpt: Checkpoint, key: str, kind: type | tuple[type, ...],
                   what: str) -> list:
    """A JSON list recorded in the output's metadata, every item of ``kind``;
    anything else means the recipe cannot be read (FormatError)."""
    try:
        value = json.loads(ckpt.metadata[key])
    except (ValueError, RecursionError):
        raise FormatError(f"{ckpt.path}: metadata {key} is not JSON") from None
    if not isinstance(value, list) or not all(
            isinstance(v, kind) and not isinstance(v, bool)
            and (not isinstance(v, float) or math.isfinite(v)) for v in value):
        raise FormatError(f"{ckpt.path}: metadata {key} must be a JSON list of {what} per "
                          f"input, got {_short(ckpt.metadata[key])}")
    return value


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _check_checksums(ckpt: Checkpoint, report: VerifyReport) -> None:
    index = ckpt.path / INDEX_NAME if ckpt.path.is_dir() else None
    if index is None or not index.is_file():
        return
    metadata = json.loads(index.read_bytes()).get("metadata", {})
    recorded = metadata.get("ladle_crc32c", {}) if isinstance(metadata, dict) else None
    if not isinstance(recorded, dict):
        raise FormatError(f"{index}: metadata ladle_crc32c is not an object of shard "
                          f"checksums; cannot check the shards")
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


_CHECKSUM_VALUE = re.compile(r"[0-9a-f]{8}")


def _check_file_checksum(ckpt: Checkpoint, report: VerifyReport) -> None:
    """A single-file output's ``ladle_file_crc32c``: CRC-32C of the whole file
    with the field's 8 digits read as zeros (how the writer computed it)."""
    key = _core.FILE_CHECKSUM_KEY
    if len(ckpt.file_sizes) != 1 or key not in ckpt.metadata:
        return
    file, size = next(iter(ckpt.file_sizes.items()))
    recorded = ckpt.metadata[key]
    if not isinstance(recorded, str) or not _CHECKSUM_VALUE.fullmatch(recorded):
        raise FormatError(f"{file}: metadata {key} must be 8 lowercase hex digits, got "
                          f"{_short(str(recorded))}; cannot check the file")
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
    field = f'"{key}":"{recorded}"'.encode()
    if header.count(field) != 1:
        raise FormatError(f"{file}: metadata {key} is not written as the writer writes it "
                          f"(compact JSON, once); cannot check the file")
    zeroed = header.replace(field, f'"{key}":"{_core.FILE_CHECKSUM_PLACEHOLDER}"'.encode())
    crc = _core.crc32c(struct.pack("<Q", n) + zeroed)
    got = f"{_core.file_crc32c(str(file), crc, 8 + n, size - 8 - n):08x}"
    report.checksums_checked += 1
    if got != recorded:
        report.problems.append(f"{file}: CRC-32C {got} of the file differs from {recorded} "
                               f"recorded in its metadata ({key}): the header or the tensor "
                               f"data changed since it was written")


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
    scales = [block_scales(c) for c in ckpts]  # block-scaled FP8 inputs, dequantized again
    # --dtype fp8 outputs: a requantized weight and its fresh scales are one job.
    fresh = fresh_scale_names(out, scales)
    names = [n for n in names if n not in fresh.values()] + [
        w for w, s in fresh.items() if s in names and w not in names]
    for name in names:
        t = out.tensors[name]
        missing = [str(c.path) for c in ckpts if name not in c.tensors]
        if missing:
            report.problems.append(f"tensor '{name}': absent from input(s) {missing}")
            continue
        infos = [c.tensors[name] for c in ckpts]
        scaled = [s.get(name) for s in scales]
        scale_t = out.tensors[fresh[name]] if name in fresh else None
        want = np.zeros(t.n_bytes + (scale_t.n_bytes if scale_t else 0), np.uint8)
        plan = _core.Plan()
        sink = plan.add_memory_sink("recomputed", want.ctypes.data, want.size)
        sources: dict[Path, int] = {}
        for info in [*infos, *(s.info for s in scaled if s)]:
            if info.file not in sources:
                size = next(c.file_sizes[info.file] for c in ckpts if info.file in c.file_sizes)
                sources[info.file] = plan.add_file_source(str(info.file), size)
        if _core.dtype_is_mergeable(infos[0].dtype):
            job_inputs = [_core.Input(sources[i.file], i.offset, i.dtype, w)
                          for i, w in zip(infos, weights)]
            plan.add_job(name, _core.JobKind.sum, t.n_elems, sink, 0, t.dtype, job_inputs)
            add_input_scales(plan, scaled, infos[0].shape[-1] if infos[0].shape else 1, sources)
            if scale_t:
                s = next(s for s in scaled if s)
                plan.scale_output(sink, t.n_bytes, s.block_rows, s.block_cols, t.shape[-1],
                                  scale_t.dtype)
        else:
            op, chosen = nonfloat_inputs(infos, weights, int_policy)
            dtype, n = (t.dtype, t.n_elems) if _core.dtype_n_bits(t.dtype) % 8 == 0 else \
                ("U8", t.n_bytes)
            plan.add_job(name, core_enum(_core.JobKind, op, "job op"), n, sink, 0, dtype,
                         [_core.Input(sources[i.file], i.offset, dtype) for i in chosen])
        _core.run(plan, threads=1)
        got = np.frombuffer(_read(t.file, t.offset, t.n_bytes), np.uint8)
        report.tensors_recomputed += 1
        if scale_t:
            scale_got = np.frombuffer(_read(scale_t.file, scale_t.offset, scale_t.n_bytes),
                                      np.uint8)
            report.tensors_recomputed += 1
            if not np.array_equal(scale_got, want[t.n_bytes:]):
                report.problems.append(f"{scale_t.file}: tensor '{scale_t.name}': the fresh FP8 "
                                       f"block scales differ from those recomputed from the "
                                       f"inputs")
            want = want[:t.n_bytes]
        if not np.array_equal(got, want):
            byte = int(np.flatnonzero(got != want)[0])
            item = max(1, _core.dtype_n_bits(t.dtype) // 8)
            report.problems.append(f"{t.file}: tensor '{name}': element {byte // item} differs "
                                   f"from the value recomputed from the inputs")
