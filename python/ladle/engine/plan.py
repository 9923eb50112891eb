"""Turn checkpoints + weights into a MergePlan: which output tensors exist, what
each is computed from, and where every byte lands in which output shard. The
plan is plain data; :func:`describe` prints it for ``--dry-run``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .. import _core
from ..errors import LadleValueError, MismatchError
from ..formats._bulk import bulk_objects
from ..formats.checkpoint import Checkpoint, TensorInfo, _preview
from ..formats.dtype_rules import widest_dtype
from ..formats.patterns import as_patterns, selected
from .fp8_blocks import (
    FP8_BLOCKS,
    SCALES_OP,
    OutputScales,
    block_scales,
    check_dequantized_dtype,
    requantized_scales,
    without_scales,
)
from .kinds import IntPolicy, JobKind, parse_kind
from .sum_plan import SumTable, sum_table

_DTYPE_ALIASES = {
    "f32": "F32", "float32": "F32", "fp32": "F32", "float": "F32",
    "f16": "F16", "float16": "F16", "fp16": "F16", "half": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
    "f64": "F64", "float64": "F64", "fp64": "F64", "double": "F64",
    "f8_e4m3": "F8_E4M3", "float8_e4m3fn": "F8_E4M3", "fp8_e4m3": "F8_E4M3", "e4m3": "F8_E4M3",
    "f8_e5m2": "F8_E5M2", "float8_e5m2": "F8_E5M2", "fp8_e5m2": "F8_E5M2", "e5m2": "F8_E5M2",
    "fp8": FP8_BLOCKS,  # block-scaled F8_E4M3 with fresh scales (ladle.engine.fp8_blocks)
}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def normalize_dtype(dtype: str | None, *, block_fp8: bool = False) -> str | None:
    """Map ``bf16``/``torch.bfloat16``/``BF16`` style names to safetensors names;
    ``fp8`` (:data:`FP8_BLOCKS`) only where ``block_fp8`` says the caller writes it."""
    if dtype is None:
        return None
    key = str(dtype).removeprefix("torch.").lower()
    if _DTYPE_ALIASES.get(key) == FP8_BLOCKS and not block_fp8:
        raise LadleValueError("output dtype 'fp8' (F8_E4M3 with fresh block scales) is "
                              "written by the linear merge only (ladle merge --alpha/--weights, "
                              "soups); use f8_e4m3 here")
    if key in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[key]
    raise LadleValueError(f"unsupported output dtype {dtype!r} (choose from bf16, f16, f32, f64, "
                          "f8_e4m3, f8_e5m2, fp8)")


@dataclass(slots=True)  # slots: a plan may hold 10^6 of them
class OutputTensor:
    """One tensor of the output and the inputs it is computed from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    # A JobKind: SUM (weighted sum), COPY (identical pass-through) or MAX; or SCALES
    # (fresh FP8 block scales, written by the job of the weight just before it).
    op: str
    inputs: list[tuple[TensorInfo, float]]
    n_bytes: int
    n_elems: int
    shard: int = -1
    offset: int = 0  # byte offset inside the shard's data buffer
    # Per input: the block scale of a block-scaled FP8 input (ladle.engine.fp8_blocks), or None.
    scales: list | None = None
    out_scales: OutputScales | None = None  # F8_E4M3 with fresh block scales


class SumTensors(Sequence):
    """``MergePlan.tensors`` (model order) or, given ``shard``, ``Shard.tensors``
    (file order) of a :class:`SumTable` plan: each OutputTensor made when asked
    for (a merge itself never asks)."""

    def __init__(self, table: SumTable, checkpoints: list[Checkpoint], weights: list[float],
                 shard: int | None = None) -> None:
        self._table, self._checkpoints, self._weights = table, checkpoints, weights
        self._shard = shard

    def __len__(self) -> int:
        if self._shard is None:
            return len(self._table.core)
        return self._table.core.shard_size(self._shard)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"tensor index {index} out of range")
        if self._shard is not None:
            index = self._table.core.shard_tensor(self._shard, index)
        name, dtype, shape, n_bytes, n_elems, shard, offset = self._table.core.tensor(index)
        inputs = [(c.tensors[name], w) for c, w in zip(self._checkpoints, self._weights)]
        return OutputTensor(name, dtype, shape, JobKind.SUM, inputs, n_bytes, n_elems,
                            shard=shard, offset=offset)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))


@dataclass
class Shard:
    file_name: str
    tensors: Sequence[OutputTensor] = field(default_factory=list)
    header: bytes = b""
    # Set when ``tensors`` is a view (a SumTable plan keeps its layout in C++).
    known_data_n_bytes: int | None = None

    @property
    def data_n_bytes(self) -> int:
        if self.known_data_n_bytes is not None:
            return self.known_data_n_bytes
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return len(self.header) + self.data_n_bytes


@dataclass
class MergePlan:
    tensors: Sequence[OutputTensor]
    shards: list[Shard]
    sharded: bool  # write index.json
    metadata: dict[str, str]
    # Same-layout weighted sums planned in C++ (ladle.engine.sum_plan): ``tensors`` is then
    # a SumTensors view and the engine's jobs come from the table.
    table: SumTable | None = None

    @property
    def bytes_read(self) -> int:
        if self.table is not None:
            return self.table.core.bytes_read
        return sum(info.n_bytes for t in self.tensors for info, w in t.inputs
                   if w != 0.0 or t.op != "sum")

    @property
    def data_n_bytes(self) -> int:
        """Bytes of tensor data in the output (index.json's ``total_size``)."""
        return sum(s.data_n_bytes for s in self.shards)

    @property
    def has_scales(self) -> bool:
        """Whether a block-scaled FP8 input is dequantized to a plain dtype (not
        requantized by --dtype fp8; never in a SumTable plan)."""
        return self.table is None and any(t.scales and not t.out_scales for t in self.tensors)

    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file name, for index.json."""
        if self.table is not None:
            names = [s.file_name for s in self.shards]
            return dict(zip(self.table.core.names(), (names[i] for i in self.table.core.shards())))
        return {t.name: self.shards[t.shard].file_name for t in self.tensors}

    @property
    def bytes_written(self) -> int:
        return sum(s.n_bytes for s in self.shards)


def match_tensors(checkpoints: list[Checkpoint], include: list[str] | None,
                  exclude: list[str] | None) -> list[str]:
    """Names present in every checkpoint (after filtering), in the first one's order.

    Raises MismatchError listing missing/extra names, shapes or dtypes that differ.
    """
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    first = checkpoints[0]
    names = _selected_names(first.tensors, include, exclude)
    wanted = set(names)
    for ckpt in checkpoints[1:]:
        theirs = set(_selected_names(ckpt.tensors, include, exclude))
        missing, extra = sorted(wanted - theirs), sorted(theirs - wanted)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s) of {first.path}: "
                             f"{_preview(missing)}")
            if extra:
                parts.append(f"{len(extra)} extra tensor(s) not in {first.path}: "
                             f"{_preview(extra)}")
            raise MismatchError(f"{ckpt.path}: " + "; ".join(parts))
        for name in names:
            a, b = first.tensors[name], ckpt.tensors[name]
            if a.shape != b.shape:
                raise MismatchError(f"tensor '{name}': shape {list(b.shape)} in {b.file} differs "
                                    f"from {list(a.shape)} in {a.file}")
            if a.dtype != b.dtype and not (_core.dtype_is_mergeable(a.dtype)
                                           and _core.dtype_is_mergeable(b.dtype)):
                raise MismatchError(f"tensor '{name}': dtype {b.dtype} in {b.file} differs "
                                    f"from {a.dtype} in {a.file}")
    if not names:
        raise LadleValueError(f"{first.path}: no tensors selected (include={include}, "
                              f"exclude={exclude})")
    return names


def _selected_names(tensors: dict[str, TensorInfo], include: list[str] | None,
                    exclude: list[str] | None) -> list[str]:
    """The names :func:`selected` keeps, in order (all of them, without a per-name
    call, when there are no patterns: checkpoints may hold 10^6 tensors)."""
    if not include and not exclude:
        return list(tensors)
    return [n for n in tensors if selected(n, include, exclude)]


INT_POLICIES = tuple(p.value for p in IntPolicy)


def check_int_policy(policy: str) -> str:
    """Validate an ``int_policy`` / ``--int-policy`` value (an IntPolicy or its name)."""
    return parse_kind(IntPolicy, policy, "int_policy").value


def nonfloat_inputs(infos: list, weights: list[float], policy: str) -> tuple[str, list]:
    """The engine op and inputs of a tensor that is not merged arithmetically
    (integer, bool and other non-float dtypes, e.g. BatchNorm's ``num_batches_tracked``).

    Only inputs with a non-zero weight take part (all inputs when every weight is
    zero), so α = 0 and α = 1 reproduce an endpoint bit for bit. Then ``policy``:
    ``"first"`` copies the first of them (in input order), ``"max"`` takes the
    elementwise max (integer and bool dtypes), ``"error"`` copies them after
    checking that they are identical (the engine raises MismatchError otherwise).

    Returns:
        (op, chosen): op ``"copy"`` or ``"max"`` and the chosen inputs, in order.
    """
    policy = check_int_policy(policy)
    live = [i for i, w in zip(infos, weights) if w != 0.0] or list(infos)
    if policy == IntPolicy.FIRST or len(live) == 1:
        return JobKind.COPY, live[:1]
    if policy == IntPolicy.MAX:
        if not (live[0].dtype == "BOOL" or live[0].dtype[0] in "IU"):
            raise LadleValueError(f"tensor '{live[0].name}': int_policy 'max' needs an integer "
                                  f"or bool dtype, not {live[0].dtype} (use first or error)")
        return JobKind.MAX, live
    return JobKind.COPY, live


class _DTypeTable(dict):
    """``fn(dtype)`` computed once per dtype (a plan asks per tensor, up to 10^6 times)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, dtype: str):
        self[dtype] = value = self.fn(dtype)
        return value



# Smallest magnitude that rounds to Inf in fp32 (FLT_MAX + half an ulp).
FP32_OVERFLOW = 3.4028235677973366e38


def check_weights(weights: list[float], n_inputs: int) -> list[float]:
    """Validate weights (count, finite in fp32) and return them as Python floats."""
    weights = [float(w) for w in weights]
    if len(weights) != n_inputs:
        raise LadleValueError(f"got {len(weights)} weight(s) for {n_inputs} input(s)")
    bad = [w for w in weights if not math.isfinite(w) or abs(w) >= FP32_OVERFLOW]
    if bad:
        raise LadleValueError(f"weights must be finite in fp32 (|w| < 3.4e38), got {weights}")
    return weights


@bulk_objects()
def build_plan(checkpoints: list[Checkpoint], weights: list[float], *, dtype: str | None = None,
               include: str | list[str] | None = None, exclude: str | list[str] | None = None,
               max_shard_bytes: int = 5 * 10**9, single_file: bool = False,
               metadata: dict[str, str] | None = None, int_policy: str = "first") -> MergePlan:
    """Plan a merge ``out = Σ_k weights[k] · checkpoints[k]`` tensor by tensor.

    Float tensors (F16/BF16/F32/F64/F8_E4M3/F8_E5M2, mixed freely) are combined
    and written as ``dtype``, else as the widest input dtype of that tensor
    (:mod:`ladle.formats.dtype_rules`); block-scaled FP8 weights are dequantized by the
    engine and written as ``dtype``, else BF16, without their scale tensors
    (:mod:`ladle.engine.fp8_blocks`); every other dtype follows ``int_policy`` over the
    inputs with a non-zero weight (see :func:`nonfloat_inputs`).
    """
    weights = check_weights(weights, len(checkpoints))
    out_dtype = normalize_dtype(dtype, block_fp8=True)
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    scales = [block_scales(c) for c in checkpoints]
    metadata = {"ladle_dtype": out_dtype or "widest", **(metadata or {})}
    if not (include or exclude or any(scales) or out_dtype == FP8_BLOCKS):
        table = sum_table(checkpoints, weights, out_dtype, list(_ITEM_BYTES))
        if table is not None:
            return _table_plan(table, checkpoints, weights, max_shard_bytes, single_file,
                               metadata)
    checkpoints = [without_scales(c, s) for c, s in zip(checkpoints, scales)]
    outputs: list[OutputTensor] = []
    mergeable = _DTypeTable(_core.dtype_is_mergeable)
    widest = _DTypeTable(widest_dtype)  # keyed by the set of the inputs' dtypes
    for name in match_tensors(checkpoints, include, exclude):
        infos = [c.tensors[name] for c in checkpoints]
        first = infos[0]
        if mergeable[first.dtype]:
            scaled = [s.get(name) for s in scales] if any(scales) else None
            if scaled and any(scaled):
                owner = next(k for k, s in enumerate(scaled) if s)
                # every scaled input's layout must allow the output dtype
                odt = [check_dequantized_dtype(out_dtype, checkpoints[k], name)
                       for k, s in enumerate(scaled) if s][-1]
            else:
                scaled = None
                plain = None if out_dtype == FP8_BLOCKS else out_dtype  # fp8: scaled only
                odt = plain or widest[frozenset([i.dtype for i in infos])]
            n_elems = first.n_elems
            outputs.append(OutputTensor(name, odt, first.shape, JobKind.SUM,
                                        list(zip(infos, weights)), n_elems * _ITEM_BYTES[odt],
                                        n_elems, scales=scaled))
            if scaled and out_dtype == FP8_BLOCKS:
                if owner != 0:  # the output's config.json is the first input's
                    raise LadleValueError(
                        f"{checkpoints[0].path}: tensor '{name}' is not block-scaled FP8 "
                        f"here but is in {checkpoints[owner].path}: --dtype fp8 keeps the "
                        f"first input's scale layout and config.json; list a block-scaled "
                        f"checkpoint first")
                outputs.append(_fresh_scales(outputs[-1], scaled[owner]))
        else:
            op, chosen = nonfloat_inputs(infos, weights, int_policy)
            outputs.append(OutputTensor(name, first.dtype, first.shape, op,
                                        [(i, 1.0) for i in chosen], first.n_bytes,
                                        first.n_elems))
    if out_dtype == FP8_BLOCKS and not any(t.out_scales for t in outputs):
        raise LadleValueError(f"{checkpoints[0].path}: --dtype fp8 requantizes block-scaled FP8 "
                              f"weights (W + W_scale_inv or W_scale), and no input has any")
    shards, meta = layout_shards(outputs, max_shard_bytes, single_file, metadata)
    return MergePlan(outputs, shards, sharded=len(shards) > 1, metadata=meta)


def _table_plan(table: SumTable, checkpoints: list[Checkpoint], weights: list[float],
                max_shard_bytes: int, single_file: bool,
                metadata: dict[str, str]) -> MergePlan:
    """The MergePlan of a :class:`SumTable`, laid out as :func:`layout_shards` does."""
    n = table.core.layout(max_shard_bytes, single_file, HEADER_SPLIT_BYTES)
    meta = _shard_metadata(n, metadata)
    shards = [Shard(shard_file_name(i, n), SumTensors(table, checkpoints, weights, shard=i),
                    table.core.shard_header(i, list(meta.items())),
                    known_data_n_bytes=table.core.shard_data_n_bytes(i)) for i in range(n)]
    return MergePlan(SumTensors(table, checkpoints, weights), shards, sharded=n > 1,
                     metadata=meta, table=table)


def _fresh_scales(weight: OutputTensor, scale) -> OutputTensor:
    """The fresh scales of ``weight`` (F8_E4M3) in the layout of the input's ``scale``,
    computed by the weight's job."""
    name, dtype, shape = requantized_scales(scale)
    n_elems = math.prod(shape)
    t = OutputTensor(name, dtype, shape, SCALES_OP, [], n_elems * _ITEM_BYTES[dtype], n_elems)
    weight.out_scales = OutputScales(t, scale.block_rows, scale.block_cols, weight.shape[1])
    return t


# A directory output starts a new shard before its header could pass this
# (the format's limit is 100 MB, checked exactly when the header is serialised).
HEADER_SPLIT_BYTES = 90 * 10**6


def layout_shards(outputs: list[OutputTensor], max_shard_bytes: int, single_file: bool,
                  metadata: dict[str, str] | None) -> tuple[list[Shard], dict[str, str]]:
    """Assign ``outputs`` to shards and serialise every shard's header.

    An output that is one file gets the ``ladle_file_crc32c`` placeholder in its
    metadata; the C++ writer fills in the file's CRC-32C before the fsync, so
    ``ladle verify`` can check a single file as the index's checksums check shards.
    A header over the format's 100 MB limit is refused here, before anything is
    written.

    Returns:
        ``(shards, metadata)``; the metadata as written (``format: pt`` first).
    """
    shards = _assign_shards(outputs, max_shard_bytes, single_file)
    meta = _shard_metadata(len(shards), metadata)
    for shard in shards:
        shard.header = _core.serialize_header(
            [(t.name, t.dtype, t.shape, t.offset, t.offset + t.n_bytes)
             for t in shard.tensors], list(meta.items()))
    return shards, meta


def _shard_metadata(n_shards: int, metadata: dict[str, str] | None) -> dict[str, str]:
    """The metadata every shard header holds (see :func:`layout_shards`)."""
    meta = {"format": "pt", **(metadata or {})}
    if n_shards == 1:
        meta[_core.FILE_CHECKSUM_KEY] = _core.FILE_CHECKSUM_PLACEHOLDER
    return meta


def shard_file_name(index: int, n_shards: int) -> str:
    """``model.safetensors`` alone, else ``model-0000i-of-0000n.safetensors``."""
    return ("model.safetensors" if n_shards == 1
            else f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors")


def _header_bound(t: OutputTensor) -> int:
    """Upper bound of the bytes ``t`` adds to a header (names JSON-escaped at
    worst 6 bytes per byte, 21 digits per number)."""
    return 6 * len(t.name.encode("utf-8", "surrogatepass")) + 80 + 21 * len(t.shape)


def _assign_shards(outputs: list[OutputTensor], max_shard_bytes: int,
                   single_file: bool) -> list[Shard]:
    groups: list[list[OutputTensor]] = [[]]
    size = header = 0
    for t in outputs:
        t_header = _header_bound(t)
        if not single_file and groups[-1] and t.op != SCALES_OP and (
                size + t.n_bytes > max_shard_bytes or header + t_header > HEADER_SPLIT_BYTES):
            # (fresh scales stay in their weight's shard: one job writes both)
            groups.append([])
            size = header = 0
        groups[-1].append(t)
        size += t.n_bytes
        header += t_header
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        name = shard_file_name(i, n)
        # Larger items first keeps every tensor aligned to its item size, as the
        # safetensors library does; the sort is stable so model order survives.
        alignment = _DTypeTable(_item_alignment)
        group = sorted(group, key=lambda t: -alignment[t.dtype])
        offset = 0
        for t in group:
            t.shard, t.offset = i, offset
            offset += t.n_bytes
        shards.append(Shard(name, group))
    return shards


def _item_alignment(dtype: str) -> int:
    return max(1, _core.dtype_n_bits(dtype) // 8)


def describe_op(t: OutputTensor) -> str:
    """``sum(w1, w2)``, ``copy(one input)``, ``copy(identical copy)`` (int policy
    error over several inputs) or ``max(n inputs)``."""
    if t.op == JobKind.SUM:
        return "sum(" + ", ".join(f"{w:g}" for _, w in t.inputs) + ")"
    if t.op == JobKind.MAX:
        return f"max({len(t.inputs)} inputs)"
    if t.op == SCALES_OP:
        return "scales(fresh FP8 block scales of the weight before)"
    return "copy(identical copy)" if len(t.inputs) > 1 else "copy(one input)"


def describe(plan: MergePlan) -> str:
    """Human-readable plan for ``--dry-run``: tensors, shards and byte counts."""
    lines = [(f"{len(plan.tensors)} tensors -> {len(plan.shards)} shard(s); "
             f"reads {plan.bytes_read} bytes, writes {plan.bytes_written} bytes")]
    for shard in plan.shards:
        lines.append(f"  {shard.file_name}: {len(shard.tensors)} tensors, {shard.n_bytes} bytes")
    for t in plan.tensors:
        lines.append(f"    {t.name} {t.dtype}{list(t.shape)} {describe_op(t)} "
                     f"-> {plan.shards[t.shard].file_name}@{t.offset}")
    return "\n".join(lines)
