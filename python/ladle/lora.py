"""``ladle extract-lora``: a PEFT LoRA adapter from the difference of two checkpoints.

For every 2-D weight ``W`` of the fine-tuned model outside the embeddings, the delta
``Δ = W_ft − W_base`` (fp32) is factored by a truncated SVD ``Δ ≈ U_r S_r V_rᵀ`` and
saved as ``lora_A = S_r^½ V_rᵀ`` (r × in) and ``lora_B = U_r S_r^½`` (out × r), so
``lora_B @ lora_A`` is the best rank-r approximation of Δ (Eckart–Young) and
``lora_alpha = r`` makes PEFT's scaling 1. One weight is in memory at a time (its two
inputs, its delta and its factors); the factors go straight into a safetensors file
whose header is fixed before the first SVD, inside ladle's atomic output directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _core
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .errors import LadleValueError, LadleWarning, MismatchError
from .output import OutputDir, checked_output, write_atomically
from .patterns import as_patterns, selected
from .plan import _ITEM_BYTES

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
# not factored: embeddings and output heads (PEFT needs lora_embedding_* for them)
_EMBED = re.compile(r"embed|(^|\.)(wte|wpe|lm_head|output)\.")
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass
class LoraReport:
    """What :func:`extract_lora` wrote."""

    out: Path | None
    n_modules: int
    rank: int
    skipped: list[str]  # tensors that differ but are not in the adapter
    seconds: float


@dataclass
class _Target:
    module: str
    base: TensorInfo
    tuned: TensorInfo
    rank: int


def extract_lora(base: str | os.PathLike, finetuned: str | os.PathLike,
                 out: str | os.PathLike, rank: int, *, device: str | None = None,
                 dtype: str | None = None, method: str = "svd", niter: int = 4,
                 include: str | list[str] | None = None,
                 exclude: str | list[str] | None = None,
                 overwrite: bool = False, progress: bool = True) -> LoraReport:
    """Extract a rank-``rank`` PEFT LoRA adapter from ``finetuned − base``.

    Args:
        base: the base checkpoint (its path goes into ``base_model_name_or_path``).
        finetuned: the fine-tuned checkpoint, same tensor names and shapes.
        out: the adapter directory (``adapter_model.safetensors`` +
            ``adapter_config.json``), written atomically.
        rank: r; a weight with fewer rows or columns gets its own smaller rank
            (``rank_pattern``/``alpha_pattern``).
        device: torch device for the SVD (default: ``cuda`` when available, else cpu).
        dtype: dtype of the factors (``bf16``, ``f16``, ``f32``; default: the
            fine-tuned weight's).
        method: ``"svd"`` (``torch.linalg.svd``, exact) or ``"lowrank"``
            (``torch.svd_lowrank`` with ``niter`` power iterations, faster on big
            matrices, approximate).
        include, exclude: globs on tensor names.

    Returns:
        A :class:`LoraReport`.

    Example:
        >>> ladle.extract_lora("base/", "ft/", "lora/", rank=16)   # doctest: +SKIP
    """
    import torch

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LadleValueError(f"rank must be a positive integer, got {rank!r}")
    if method not in ("svd", "lowrank"):
        raise LadleValueError(f"method must be 'svd' or 'lowrank', got {method!r}")
    out_dtype = _out_dtype(dtype)
    output = checked_output(out, [base, finetuned], overwrite=overwrite)
    if output.single_file:
        raise LadleValueError(f"{out}: a LoRA adapter is a directory, not a .safetensors file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LadleValueError(f"device {device!r}: no CUDA device is available")
    b, f = open_checkpoint(base), open_checkpoint(finetuned)
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    targets, skipped = _targets(b, f, rank, include, exclude)
    if skipped:
        warnings.warn(f"{len(skipped)} tensor(s) differ from the base but are not 2-D "
                      f"non-embedding weights, so the adapter leaves them out: "
                      f"{', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}",
                      LadleWarning, stacklevel=2)
    entries, total = [], 0
    for t in targets:
        dt = out_dtype or t.tuned.dtype
        rows, cols = t.tuned.shape
        for suffix, shape in (("lora_A", (t.rank, cols)), ("lora_B", (rows, t.rank))):
            n_bytes = math.prod(shape) * _ITEM_BYTES[dt]
            entries.append((f"base_model.model.{t.module}.{suffix}.weight", dt, list(shape),
                            total, total + n_bytes))
            total += n_bytes
    header = _core.serialize_header(entries, [("format", "pt")])
    config = _adapter_config(b.path, targets, rank)
    t0 = time.perf_counter()

    def work(output: OutputDir) -> None:
        path = output.partial / ADAPTER_FILE
        with open(path, "wb") as fh:
            fh.write(header)
            for i, t in enumerate(targets):
                a, bb = _factor(t, device, method, niter)
                for factor, entry in zip((a, bb), entries[2 * i:2 * i + 2]):
                    dt = getattr(torch, _TORCH_DTYPES[entry[1]])
                    data = factor.to(dt).contiguous().cpu()
                    fh.write(data.view(torch.uint8).numpy().tobytes()
                             if data.numel() else b"")
                if progress:
                    print(f"\rextract-lora: {i + 1}/{len(targets)} {t.module}", end="",
                          flush=True)
            fh.flush()
            os.fsync(fh.fileno())
        if progress and targets:
            print()
        (output.partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    _, dest = write_atomically(output, work)
    return LoraReport(dest, len(targets), rank, skipped, time.perf_counter() - t0)


def _out_dtype(dtype: str | None) -> str | None:
    from .plan import normalize_dtype

    dt = normalize_dtype(dtype)
    if dt is not None and dt not in ("F32", "F16", "BF16"):
        raise LadleValueError(f"LoRA factors are bf16, f16 or f32, got {dtype!r}")
    return dt


def _targets(base: Checkpoint, tuned: Checkpoint, rank: int, include, exclude
             ) -> tuple[list[_Target], list[str]]:
    """The 2-D float weights to factor (base and fine-tuned agree on shape), and
    the names of other tensors that differ from the base (reported, not saved)."""
    missing = sorted(n for n in tuned.tensors if n not in base.tensors and selected(
        n, include, exclude))
    if missing:
        raise MismatchError(f"{base.path}: {len(missing)} tensor(s) of {tuned.path} are "
                            f"missing, e.g. '{missing[0]}'")
    targets, skipped = [], []
    for name, info in tuned.tensors.items():
        if not selected(name, include, exclude):
            continue
        b = base.tensors[name]
        if b.shape != info.shape:
            raise MismatchError(f"tensor '{name}': shape {list(info.shape)} in {info.file} "
                                f"differs from {list(b.shape)} in {b.file}")
        factorable = (len(info.shape) == 2 and name.endswith(".weight")
                      and info.dtype in _TORCH_DTYPES and b.dtype in _TORCH_DTYPES
                      and not _EMBED.search(name))
        if factorable:
            targets.append(_Target(name.removesuffix(".weight"), b, info,
                                   min(rank, *info.shape)))
        elif b.dtype != info.dtype or _differs(b, info):
            skipped.append(name)
    if not targets:
        raise LadleValueError(f"{tuned.path}: no 2-D weights to factor (include={include}, "
                              f"exclude={exclude})")
    return targets, skipped


def _read(info: TensorInfo) -> bytes:
    with open(info.file, "rb") as fh:
        fh.seek(info.offset)
        return fh.read(info.n_bytes)


def _differs(a: TensorInfo, b: TensorInfo, chunk: int = 1 << 24) -> bool:
    """Whether two same-shape tensors' bytes differ, read ``chunk`` bytes at a time."""
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(a.offset)
        fb.seek(b.offset)
        for start in range(0, a.n_bytes, chunk):
            n = min(chunk, a.n_bytes - start)
            if fa.read(n) != fb.read(n):
                return True
    return False


def load_tensor(info: TensorInfo):
    """One tensor from its file as a CPU torch tensor (a copy of its bytes)."""
    import torch

    raw = np.frombuffer(_read(info), dtype=np.uint8).copy()
    t = torch.from_numpy(raw)
    if raw.size:
        t = t.view(getattr(torch, _TORCH_DTYPES[info.dtype]))
    return t.reshape(info.shape)


def _factor(t: _Target, device: str, method: str, niter: int):
    """(lora_A, lora_B) in fp32 for one weight: √S·Vᵀ and U·√S of its top-r SVD."""
    import torch

    delta = (load_tensor(t.tuned).to(device, torch.float32)
             - load_tensor(t.base).to(device, torch.float32))
    if method == "lowrank":
        u, s, v = torch.svd_lowrank(delta, q=min(t.rank + 8, *delta.shape), niter=niter)
        vh = v.mT
    else:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = torch.sqrt(s[:t.rank])
    return root[:, None] * vh[:t.rank], u[:, :t.rank] * root[None, :]


def _adapter_config(base_path: Path, targets: list[_Target], rank: int) -> dict:
    """PEFT's LoraConfig as JSON: scaling lora_alpha / r = 1 for every module."""
    smaller = {t.module: t.rank for t in targets if t.rank != rank}
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": str(base_path),
        "target_modules": sorted(t.module for t in targets),
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": smaller,
        "alpha_pattern": smaller,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
    }
