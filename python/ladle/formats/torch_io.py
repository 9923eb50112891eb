"""PyTorch zip checkpoints (``.pt``/``.bin``/``.pth``) as inputs: read with
``torch.load(mmap=True, weights_only=True)``, so tensor bytes stay memory-mapped
and no arbitrary code is ever unpickled. open_clip's ``{"state_dict": ...}`` wrapper
(and its DDP ``module.`` prefix) are handled here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import FormatError, LadleValueError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")

_TORCH_TO_ST = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def torch_dtype_name(tensor: Any) -> str:
    """safetensors name of a torch tensor's dtype."""
    key = str(tensor.dtype).removeprefix("torch.")
    if key not in _TORCH_TO_ST:
        raise LadleValueError(f"unsupported torch dtype {tensor.dtype}")
    return _TORCH_TO_ST[key]


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a PyTorch checkpoint, memory-mapped, by name.

    Unwraps ``{"state_dict": {...}}`` (open_clip, Lightning) and similar one-level
    wrappers, and strips a ``module.`` prefix carried by every key (DDP).

    Args:
        path: a ``.pt``/``.bin``/``.pth``/``.ckpt`` file written by ``torch.save``.

    Returns:
        name -> CPU tensor backed by the file's pages.

    Raises:
        FormatError: the file is not a weights-only zip checkpoint of tensors.

    Example:
        >>> sd = load_torch_checkpoint("epoch_10.pt")   # doctest: +SKIP
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on sparse/legacy storages: ladle
            warnings.simplefilter("ignore", UserWarning)  # reports what it refuses itself
            obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise FormatError(f"{path}: not a weights-only PyTorch checkpoint: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return state_dict_of(obj, str(path))


def state_dict_of(obj: Any, label: str) -> dict[str, Any]:
    """The flat name -> tensor dict inside a loaded checkpoint object."""
    import torch

    if isinstance(obj, dict) and not _all_tensors(obj):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and _all_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{label}: expected a dict of tensors (or {{'state_dict': ...}}), "
                          f"found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FormatError(f"{label}: {len(bad)} entries are not tensors, e.g. {bad[0]!r}")
    for name, t in obj.items():
        check_dense(label, name, t)
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def check_dense(label: str, name: str, t: Any) -> None:
    """Only dense (strided), unquantized tensors have one flat buffer to stream."""
    layout = str(getattr(t, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise LadleValueError(f"{label}: tensor '{name}' is sparse ({layout}); ladle merges "
                              f"dense tensors only: convert it with .to_dense() first")
    if getattr(t, "is_quantized", False):
        raise LadleValueError(f"{label}: tensor '{name}' is quantized ({t.dtype}); ladle "
                              f"merges unquantized tensors only: .dequantize() it first")


def _all_tensors(d: dict) -> bool:
    import torch

    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())
