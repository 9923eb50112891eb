"""Block-scaled FP8 checkpoints (DeepSeek-V3/R1 layout) as merge inputs.

A weight ``W`` (F8_E4M3 or F8_E5M2, ``[R, C]``) with a companion ``W_scale_inv``
(F32, ``[ceil(R/128), ceil(C/128)]``; the block size is config.json's
``quantization_config.weight_block_size``) stands for the values
``fp32(W)[r, c] * W_scale_inv[r // 128, c // 128]``. The engine dequantizes each
input tile on the fly inside its fp32 weighted sum (csrc/host_sum.cc; no whole
tensor is ever dequantized), so scales are never averaged as if they were weights.
The merged tensor is written as BF16 unless ``--dtype`` says otherwise; the
``*_scale_inv`` tensors are not written, and ``quantization_config`` is removed
from the copied config.json (the output is no longer quantized).

Not merged yet, and refused with a clear error: requantizing to FP8
(``--dtype f8_e4m3``/``f8_e5m2``), F64 outputs of scaled tensors, and
compressed-tensors per-tensor/per-channel ``weight_scale`` companions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from .checkpoint import Checkpoint, TensorInfo
from .dtype_rules import fp8_scale_pairs
from .errors import LadleValueError, LadleWarning

DEFAULT_BLOCK = (128, 128)
DEQUANTIZED_DTYPE = "BF16"  # the output dtype of a dequantized tensor without --dtype
CONFIG_NAME = "config.json"
_CONFIG_MAX_BYTES = 16 << 20

PER_CHANNEL = ("{}: tensor '{}' is FP8 with a per-tensor/per-channel scale '{}' "
               "(compressed-tensors layout): not merged yet (only DeepSeek-style block scales "
               "'*_scale_inv' are dequantized); dequantize to BF16 first")


class BlockScale(NamedTuple):
    """The scale tensor of one block-scaled input and its block size."""

    info: TensorInfo  # the F32 ``W_scale_inv`` tensor
    block_rows: int
    block_cols: int


def quantization_config(ckpt: Checkpoint) -> dict[str, Any]:
    """``quantization_config`` of the checkpoint directory's config.json ({} without one).

    The file is read like the files copied into outputs: a regular file inside the
    directory or its Hugging Face cache root (path_safety).
    """
    from .hf_cache import hf_cache_root
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


def _block_size(ckpt: Checkpoint, qc: dict[str, Any]) -> tuple[int, int]:
    method = qc.get("quant_method")
    if method not in (None, "fp8"):
        raise LadleValueError(f"{ckpt.path}: quantization_config quant_method {method!r} is not "
                              f"merged (only DeepSeek-style 'fp8' block scales are); "
                              f"dequantize to BF16 first")
    block = qc.get("weight_block_size", DEFAULT_BLOCK)
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise LadleValueError(f"{ckpt.path}: quantization_config weight_block_size must be two "
                              f"positive integers, got {block!r}")
    return int(block[0]), int(block[1])


def block_scales(ckpt: Checkpoint) -> dict[str, BlockScale]:
    """weight name -> its :class:`BlockScale`, for every block-scaled FP8 weight.

    Raises:
        LadleValueError: a per-channel ``_scale`` companion, another quantization
            method, or a scale tensor that is not F32 of the block grid's shape.
    """
    pairs = fp8_scale_pairs(ckpt.tensors)
    if not pairs:
        return {}
    if not isinstance(ckpt, Checkpoint):
        raise LadleValueError(f"{getattr(ckpt, 'label', ckpt)}: tensor '{pairs[0][0]}' is FP8 "
                              f"with scales in '{pairs[0][1]}': block-scaled FP8 is merged "
                              f"only from safetensors checkpoint files; save it as one first")
    br, bc = _block_size(ckpt, quantization_config(ckpt))
    out: dict[str, BlockScale] = {}
    for weight, scale in pairs:
        if not scale.endswith("_scale_inv"):
            raise LadleValueError(PER_CHANNEL.format(ckpt.path, weight, scale))
        w, s = ckpt.tensors[weight], ckpt.tensors[scale]
        grid = ((math.ceil(w.shape[0] / br), math.ceil(w.shape[1] / bc))
                if len(w.shape) == 2 else None)
        if grid is None or s.dtype != "F32" or tuple(s.shape) != grid:
            need = (f"{br}x{bc} blocks need F32{list(grid)}" if grid
                    else "block scales need a 2-D weight")
            raise LadleValueError(f"{s.file}: tensor '{scale}' ({s.dtype}{list(s.shape)}) is "
                                  f"not a block scale of '{weight}' ({w.dtype}{list(w.shape)}): "
                                  f"{need}; not merged")
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
    """The output dtype of a dequantized tensor: ``out_dtype``, else BF16."""
    if out_dtype is None:
        return DEQUANTIZED_DTYPE
    if out_dtype.startswith("F8_") or out_dtype == "F64":
        why = ("requantizing to FP8 with fresh block scales is not supported yet"
               if out_dtype.startswith("F8_") else "they are dequantized and merged in fp32")
        raise LadleValueError(f"{ckpt.path}: tensor '{weight}' is block-scaled FP8 and cannot "
                              f"be written as {out_dtype}: {why}; use --dtype bf16 (the "
                              f"default for these tensors), f16 or f32")
    return out_dtype


def add_input_scales(core_plan: Any, scales: list[BlockScale | None] | None,
                     n_cols: int, source_of: dict[Path, int]) -> None:
    """Mark the block-scaled inputs of the job just added to ``core_plan``
    (``scales[k]`` belongs to its input ``k``; ``source_of`` maps files to sources)."""
    for k, s in enumerate(scales or ()):
        if s is not None:
            core_plan.scale_input(k, source_of[s.info.file], s.info.offset, s.block_rows,
                                  s.block_cols, n_cols)


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
