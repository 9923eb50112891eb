"""Block-scaled FP8 checkpoints as merge inputs and outputs.

Inputs. A weight ``W`` (F8_E4M3 or F8_E5M2, ``[R, C]``) with a scale companion
stands for ``fp32(fp32(W)[r, c] * fp32(scale[r // br, c // bc]))``; the scales are
F32, or BF16/F16 (some compressed-tensors checkpoints), converted exactly to fp32.
The engine dequantizes each input tile on the fly inside its fp32 weighted sum
(csrc/host_sum.cc; no whole tensor is ever dequantized), so scales are never
averaged as if they were weights. Two layouts, told apart by config.json's
``quantization_config``:

- DeepSeek-V3/R1 (``quant_method: fp8``): ``W_scale_inv`` ``[ceil(R/br), ceil(C/bc)]``
  with ``(br, bc) = weight_block_size`` (default 128x128).
- compressed-tensors (``quant_method: compressed-tensors``, ``format:
  float-quantized``; Qwen3/RedHat FP8): ``W_scale`` whose strategy (the weights'
  ``strategy`` of its ``config_groups``) is ``tensor`` (one scale: a single R x C
  block), ``channel`` (``[R, 1]``: 1 x C blocks) or ``block`` (``block_structure``).
  Other strategies are refused.

Outputs. The merged tensor is written as BF16 unless ``--dtype`` says otherwise; the
scales are not written and ``quantization_config`` is removed from the copied
config.json (the output is no longer quantized). ``--dtype fp8`` (:data:`FP8_BLOCKS`)
instead keeps the first input's layout, either of the two: each block-scaled weight
is written as F8_E4M3 with fresh scales of the input scale tensor's name, shape and
dtype, and config.json is copied unchanged (``quantization_config`` included). Per
block (csrc/fp8_requant.cc):

1. ``s = fp32(amax|block| / 448)``, 1 for an all-zero block;
2. ``s`` rounded to the scale dtype (nearest even; nothing to do for F32) *before*
   it is used, so dequantizing the output with its stored scale is what was
   quantized; should that rounding go down so far that ``amax / s`` exceeds 464
   (which E4M3 cannot round to 448: F16 subnormal scales, or one rounding to 0), ``s``
   takes the next value of the scale dtype up; an ``s`` beyond F16's range (merged
   values above ~2.9e7) is an error;
3. ``q = f8_e4m3(fp32(x / s))`` rounded to nearest even with saturation, as torch's
   ``(x / s).to(torch.float8_e4m3fn)``; ``s`` is stored in the scale dtype (exact).

A merged NaN or Inf is an error naming the output file and tensor. When a block row
(``br x C`` elements; one row for ``channel``, the whole tensor for ``tensor``) fits
a chunk, the engine sums whole block rows into an fp32 buffer once, takes each
block's amax from it and quantizes it. A larger block row is never buffered: a first
pass sums the tensor chunk by chunk keeping only each block's amax (a max, exact in
any order), a second sums it again and quantizes with the now-known scales
(csrc/fp8_two_pass.cc). Both give the same bytes, whatever the threads, chunk size
or backend (``--device cuda`` runs these tensors on the host).

Refused with a clear error: F64 outputs of scaled tensors, ``--dtype f8_e4m3``/
``f8_e5m2`` on scaled tensors (use ``fp8``), ``--dtype fp8`` when the first input's
tensor is not block-scaled but another's is, and scales that are not F32/BF16/F16.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import LadleValueError, LadleWarning
from ..formats.checkpoint import Checkpoint, TensorInfo
from ..formats.dtype_rules import fp8_scale_pairs

DEFAULT_BLOCK = (128, 128)
FP8_BLOCKS = "FP8"  # --dtype fp8: F8_E4M3 with fresh block scales (plan.normalize_dtype)
FP8_BLOCKS_DTYPE = "F8_E4M3"
SCALE_DTYPES = ("F32", "BF16", "F16")  # scales are read (and fresh ones written) as these
SCALES_OP = "scales"  # the op of an output scale tensor: written by its weight's job
DEQUANTIZED_DTYPE = "BF16"  # the output dtype of a dequantized tensor without --dtype
CONFIG_NAME = "config.json"
_CONFIG_MAX_BYTES = 16 << 20

COMPRESSED = "compressed-tensors"
STRATEGIES = ("tensor", "channel", "block")


class BlockScale(NamedTuple):
    """The scale tensor of one block-scaled input and its block size."""

    info: TensorInfo  # the ``W_scale_inv``/``W_scale`` tensor (F32, BF16 or F16)
    block_rows: int
    block_cols: int


def quantization_config(ckpt: Checkpoint) -> dict[str, Any]:
    """``quantization_config`` of the checkpoint directory's config.json ({} without one).

    The file is read like the files copied into outputs: a regular file inside the
    directory or its Hugging Face cache root (path_safety).
    """
    from ..formats.hf_cache import hf_cache_root
    from .path_safety import UnsafePathError, open_regular

    config = next((p for p in ckpt.extra_files if p.name == CONFIG_NAME), None)
    if config is None:
        return {}
    try:
        fd = open_regular(config, root=hf_cache_root(config.parent))
        with open(fd, "rb", closefd=True) as f:
            data = json.loads(f.read(_CONFIG_MAX_BYTES))
    except (OSError, UnsafePathError, ValueError, RecursionError):
        return {}  # not read: the scales' shapes are still checked against 128x128 blocks
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    return qc if isinstance(qc, dict) else {}


class ScaleLayout(NamedTuple):
    """How a checkpoint's FP8 weights are scaled (from its quantization_config)."""

    suffix: str  # "_scale_inv" (DeepSeek) or "_scale" (compressed-tensors)
    strategy: str  # "block", "tensor" or "channel"
    block: tuple[int, int]


def _positive_pair(ckpt: Checkpoint, key: str, block: Any) -> tuple[int, int]:
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise LadleValueError(f"{ckpt.path}: quantization_config {key} must be two "
                              f"positive integers, got {block!r}")
    return int(block[0]), int(block[1])


def _compressed_layout(ckpt: Checkpoint, qc: dict[str, Any]) -> ScaleLayout:
    fmt = qc.get("format")
    if fmt != "float-quantized":
        raise LadleValueError(f"{ckpt.path}: quantization_config format {fmt!r} of "
                              f"{COMPRESSED} is not merged (only 'float-quantized' FP8 is); "
                              f"dequantize to BF16 first")
    groups = qc.get("config_groups")
    weights = [g.get("weights") for g in groups.values()] if isinstance(groups, dict) else []
    layouts = set()
    for w in weights:
        if not isinstance(w, dict):
            continue
        strategy = w.get("strategy")
        if strategy not in STRATEGIES:
            raise LadleValueError(f"{ckpt.path}: quantization_config weight strategy "
                                  f"{strategy!r} is not merged (known: "
                                  f"{', '.join(STRATEGIES)}); dequantize to BF16 first")
        block = (_positive_pair(ckpt, "block_structure", w.get("block_structure"))
                 if strategy == "block" else (0, 0))
        layouts.add(ScaleLayout("_scale", strategy, block))
    if len(layouts) != 1:
        raise LadleValueError(f"{ckpt.path}: quantization_config config_groups must give "
                              f"one weight strategy, got {len(layouts)} "
                              f"({sorted(lay.strategy for lay in layouts)})")
    return layouts.pop()


def scale_layout(ckpt: Checkpoint, qc: dict[str, Any]) -> ScaleLayout:
    """The checkpoint's scale layout; DeepSeek's without a quantization_config."""
    method = qc.get("quant_method")
    if method == COMPRESSED:
        return _compressed_layout(ckpt, qc)
    if method not in (None, "fp8"):
        raise LadleValueError(f"{ckpt.path}: quantization_config quant_method {method!r} is not "
                              f"merged (only 'fp8' block scales and {COMPRESSED} "
                              f"float-quantized are); dequantize to BF16 first")
    block = _positive_pair(ckpt, "weight_block_size",
                           qc.get("weight_block_size", DEFAULT_BLOCK))
    return ScaleLayout("_scale_inv", "block", block)


def _blocks_of(layout: ScaleLayout, shape: tuple[int, ...]) -> tuple[int, int]:
    """(block_rows, block_cols) of a 2-D weight of ``shape`` under ``layout``."""
    if layout.strategy == "tensor":
        return shape[0], shape[1]
    if layout.strategy == "channel":
        return 1, shape[1]
    return layout.block


def block_scales(ckpt: Checkpoint) -> dict[str, BlockScale]:
    """weight name -> its :class:`BlockScale`, for every scaled FP8 weight.

    Raises:
        LadleValueError: a scale companion of the other layout, an unknown
            quantization method or strategy, or a scale tensor that is not F32,
            BF16 or F16 of the block grid's shape.
    """
    pairs = fp8_scale_pairs(ckpt.tensors)
    if not pairs:
        return {}
    if not isinstance(ckpt, Checkpoint):
        raise LadleValueError(f"{getattr(ckpt, 'label', ckpt)}: tensor '{pairs[0][0]}' is FP8 "
                              f"with scales in '{pairs[0][1]}': block-scaled FP8 is merged "
                              f"only from safetensors checkpoint files; save it as one first")
    layout = scale_layout(ckpt, quantization_config(ckpt))
    out: dict[str, BlockScale] = {}
    for weight, scale in pairs:
        w, s = ckpt.tensors[weight], ckpt.tensors[scale]
        if not scale.endswith(layout.suffix):
            kind = ("a per-tensor/per-channel scale (compressed-tensors layout)"
                    if layout.suffix == "_scale_inv" else "a DeepSeek-style block scale")
            raise LadleValueError(f"{s.file}: tensor '{scale}' of '{weight}' is {kind}, but "
                                  f"{ckpt.path}'s quantization_config (config.json) says "
                                  f"{layout.strategy} scales named '*{layout.suffix}'; "
                                  f"not merged")
        if len(w.shape) != 2:
            raise LadleValueError(f"{s.file}: tensor '{scale}' ({s.dtype}{list(s.shape)}) is "
                                  f"not a {layout.strategy} scale of '{weight}' "
                                  f"({w.dtype}{list(w.shape)}): {layout.strategy} scales need "
                                  f"a 2-D weight; not merged")
        br, bc = _blocks_of(layout, tuple(w.shape))
        grid = (math.ceil(w.shape[0] / br), math.ceil(w.shape[1] / bc))
        fits = tuple(s.shape) == grid or (grid == (1, 1) and math.prod(s.shape) == 1)
        if s.dtype not in SCALE_DTYPES or not fits:
            raise LadleValueError(f"{s.file}: tensor '{scale}' ({s.dtype}{list(s.shape)}) is "
                                  f"not a {layout.strategy} scale of '{weight}' "
                                  f"({w.dtype}{list(w.shape)}): {br}x{bc} blocks need "
                                  f"F32{list(grid)} (or BF16/F16); not merged")
        out[weight] = BlockScale(s, br, bc)
    return out


def without_scales(ckpt: Checkpoint, scales: dict[str, BlockScale]) -> Checkpoint:
    """``ckpt`` without its scale tensors (they are applied, never merged or written)."""
    if not scales:
        return ckpt
    drop = {s.info.name for s in scales.values()}
    return dataclasses.replace(ckpt, tensors={n: t for n, t in ckpt.tensors.items()
                                              if n not in drop})


def check_dequantized_dtype(out_dtype: str | None, ckpt: Checkpoint, weight: str) -> str:
    """The output dtype of a dequantized tensor: ``out_dtype``, else BF16
    (F8_E4M3 for :data:`FP8_BLOCKS`, which keeps the input's scale layout)."""
    if out_dtype is None:
        return DEQUANTIZED_DTYPE
    if out_dtype == FP8_BLOCKS:
        return FP8_BLOCKS_DTYPE
    if out_dtype.startswith("F8_") or out_dtype == "F64":
        why = ("requantizing to FP8 with fresh block scales is --dtype fp8"
               if out_dtype.startswith("F8_") else "they are dequantized and merged in fp32")
        raise LadleValueError(f"{ckpt.path}: tensor '{weight}' is block-scaled FP8 and cannot "
                              f"be written as {out_dtype}: {why}; or use --dtype bf16 (the "
                              f"default for these tensors), f16 or f32")
    return out_dtype


def requantized_scales(scale: BlockScale) -> tuple[str, str, tuple]:
    """Name, dtype and shape of the fresh scales of an F8_E4M3 output: those of the
    input's scale tensor (the same block grid; ``[1]`` or ``[]`` for one per tensor)."""
    return scale.info.name, scale.info.dtype, tuple(scale.info.shape)


def add_input_scales(core_plan: Any, scales: list[BlockScale | None] | None,
                     n_cols: int, source_of: dict[Path, int]) -> None:
    """Mark the block-scaled inputs of the job just added to ``core_plan``
    (``scales[k]`` belongs to its input ``k``; ``source_of`` maps files to sources)."""
    for k, s in enumerate(scales or ()):
        if s is not None:
            core_plan.scale_input(k, source_of[s.info.file], s.info.offset, s.block_rows,
                                  s.block_cols, n_cols, s.info.dtype)


def add_output_scales(core_plan: Any, scale: Any, sink: int, header_n_bytes: int) -> None:
    """Make the job just added to ``core_plan`` write F8_E4M3 with fresh block scales
    into the output tensor ``scale`` (an OutputTensor in the same shard)."""
    core_plan.scale_output(sink, header_n_bytes + scale.tensor.offset, scale.block_rows,
                           scale.block_cols, scale.n_cols, scale.tensor.dtype)


class OutputScales(NamedTuple):
    """The fresh scale tensor of a requantized output weight."""

    tensor: Any  # plan.OutputTensor with op SCALES, in the weight's shard
    block_rows: int
    block_cols: int
    n_cols: int


def fresh_scale_names(out: Checkpoint, scales: list[dict[str, BlockScale]]) -> dict[str, str]:
    """weight -> scale name, for the weights of a ``--dtype fp8`` output ``out``
    (F8_E4M3 with a scale tensor of the name an input's scale had)."""
    fresh = {}
    for by_weight in scales:
        for weight, s in by_weight.items():
            t = out.tensors.get(weight)
            if t is not None and t.dtype == FP8_BLOCKS_DTYPE and s.info.name in out.tensors:
                fresh.setdefault(weight, s.info.name)
    return fresh


def drop_quantization_config(directory: Path) -> None:
    """Remove ``quantization_config`` from the config.json copied into ``directory``
    (an output being written): its weights are no longer quantized."""
    from .output import _fsync_file

    path = directory / CONFIG_NAME
    if not path.is_file() or path.is_symlink():
        return
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        warnings.warn(f"{path}: not JSON; its quantization_config (if any) was not removed "
                      f"although the merged weights are dequantized", LadleWarning, stacklevel=2)
        return
    if isinstance(data, dict) and data.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(data, indent=2) + "\n")
        _fsync_file(path)
