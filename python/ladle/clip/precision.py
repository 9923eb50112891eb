"""Mixed precision and memory format for the harness's forward passes on CUDA.

``autocast`` is ``None`` (fp32), ``"bf16"`` or ``"fp16"``; it applies on CUDA only
(on CPU the forward stays fp32, so CPU results never depend on the option). fp16
training needs loss scaling: :func:`grad_scaler` gives torch's ``GradScaler`` then,
and a disabled one otherwise.

Example:
    >>> with autocast_context("cpu", "bf16"):
    ...     torch.ones(2, 2) @ torch.ones(2, 2)
    tensor([[2., 2.],
            [2., 2.]])
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_autocast(mode: str | None) -> None:
    """Refuse anything but None, ``bf16`` and ``fp16``."""
    if mode is not None and mode not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be null, 'bf16' or 'fp16', got {mode!r}")


def autocast_context(device: torch.device | str, mode: str | None) -> Any:
    """``torch.autocast`` on CUDA with the chosen dtype; a no-op otherwise."""
    check_autocast(mode)
    if mode is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[mode])


def grad_scaler(device: torch.device | str, mode: str | None) -> Any:
    """torch's ``GradScaler`` for fp16 on CUDA (enabled only then)."""
    return torch.amp.GradScaler("cuda", enabled=mode == "fp16" and
                                torch.device(device).type == "cuda")


def to_device(x: torch.Tensor, device: torch.device | str,
              channels_last: bool = False) -> torch.Tensor:
    """Move a batch to ``device`` (non-blocking from pinned memory), NHWC if asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
