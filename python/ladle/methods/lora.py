"""``ladle extract-lora``: a PEFT LoRA adapter from the difference of two checkpoints.

For every 2-D weight ``W`` of the fine-tuned model outside the embeddings, the delta
``Δ = W_ft − W_base`` (fp32) is factored by a truncated SVD ``Δ ≈ U_r S_r V_rᵀ`` and
saved as ``lora_A = S_r^½ V_rᵀ`` (r × in) and ``lora_B = U_r S_r^½`` (out × r), so
``lora_B @ lora_A`` is the best rank-r approximation of Δ (Eckart–Young) and
``lora_alpha = r`` makes PEFT's scaling 1. One weight is in memory at a time (its two
inputs, its delta and its factors); the factors are appended to a body file as each
SVD finishes and the adapter is its header plus that body (``sv_epsilon`` makes the
ranks known only after the SVDs), inside ladle's atomic output directory. Options as
in ``mergekit-extract-lora``: ``embed_lora`` (embeddings as PEFT's lora_embedding_A/B
of Δᵀ, output heads as plain LoRA), ``modules_to_save`` (full rank), ``sv_epsilon``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _core
from ..engine.output import OutputDir, checked_output, write_atomically
from ..errors import LadleValueError, LadleWarning, MismatchError
from ..formats.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from ..formats.patterns import as_patterns, selected

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
# Input embeddings (factored transposed into lora_embedding_* with --embed-lora) and
# output heads (plain LoRA with --embed-lora); both left out by default.
_EMBED_IN = re.compile(r"embed|(^|\.)(wte|wpe)\.")
_HEAD = re.compile(r"(^|\.)(lm_head|output)\.")
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass
class LoraReport:
    """What :func:`extract_lora` wrote."""

    out: Path | None
    n_modules: int
    rank: int
    skipped: list[str]  # tensors that differ but are not in the adapter
    seconds: float
    dropped: list[str] = field(default_factory=list)  # modules with no singular value
    #                                                     above sv_epsilon


@dataclass
class _Target:
    module: str
    base: TensorInfo
    tuned: TensorInfo
    rank: int
    transpose: bool = False  # an nn.Embedding: PEFT's lora_embedding_A/B of Δᵀ


def extract_lora(base: str | os.PathLike, finetuned: str | os.PathLike,
                 out: str | os.PathLike, rank: int, *, device: str | None = None,
                 dtype: str | None = None, method: str = "svd", niter: int = 4,
                 include: str | list[str] | None = None,
                 exclude: str | list[str] | None = None,
                 modules_to_save: list[str] | None = None, embed_lora: bool = False,
                 sv_epsilon: float = 0.0,
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
        include, exclude: globs on tensor names (not applied to ``modules_to_save``).
        modules_to_save: modules saved at full rank from the fine-tune (PEFT's
            ``modules_to_save``): a module matches by its full name or its last
            component (``lm_head``, ``norm``), as in mergekit.
        embed_lora: factor the input embeddings too (``lora_embedding_A/B`` of the
            transposed delta, PEFT's Embedding layout) and the output heads as plain
            LoRA modules; by default both are left out.
        sv_epsilon: drop singular values ``≤ sv_epsilon`` (a module's rank becomes
            ``min(rank, #{s > sv_epsilon})``; a module left with none is not saved).

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
    if isinstance(sv_epsilon, bool) or not isinstance(sv_epsilon, (int, float)) or not (
            math.isfinite(sv_epsilon) and sv_epsilon >= 0):
        raise LadleValueError(f"sv_epsilon must be a finite number >= 0, got {sv_epsilon!r}")
    out_dtype = _out_dtype(dtype)
    output = checked_output(out, [base, finetuned], overwrite=overwrite)
    if output.single_file:
        raise LadleValueError(f"{out}: a LoRA adapter is a directory, not a .safetensors file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LadleValueError(f"device {device!r}: no CUDA device is available")
    b, f = open_checkpoint(base), open_checkpoint(finetuned)
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    saved = _modules_to_save(f, modules_to_save or [])
    targets, skipped = _targets(b, f, rank, include, exclude, embed_lora,
                                {i.name for i in saved})
    if skipped:
        warnings.warn(f"{len(skipped)} tensor(s) differ from the base but are not 2-D "
                      f"non-embedding weights, so the adapter leaves them out: "
                      f"{', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}",
                      LadleWarning, stacklevel=2)
    t0 = time.perf_counter()
    dropped: list[str] = []

    def work(output: OutputDir) -> None:
        # Ranks are known only after each SVD (sv_epsilon), so the tensors go to a
        # body file first and the header is written in front of it at the end.
        body = output.partial / (ADAPTER_FILE + ".body")
        entries, ranks, total = [], {}, 0
        with open(body, "wb") as fh:
            for i, t in enumerate(targets):
                factors = _factor(t, device, method, niter, sv_epsilon)
                if factors[0].shape[0] == 0:
                    dropped.append(t.module)
                    continue
                ranks[t.module] = factors[0].shape[0]
                kind, suffix = ("lora_embedding", "") if t.transpose else ("lora", ".weight")
                dt = out_dtype or t.tuned.dtype
                for half, factor in zip("AB", factors):
                    data = factor.to(getattr(torch, _TORCH_DTYPES[dt])).contiguous().cpu()
                    raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
                    entries.append((f"base_model.model.{t.module}.{kind}_{half}{suffix}", dt,
                                    list(data.shape), total, total + len(raw)))
                    fh.write(raw)
                    total += len(raw)
                if progress:
                    print(f"\rextract-lora: {i + 1}/{len(targets)} {t.module}", end="",
                          flush=True)
            for info in saved:  # full rank, the fine-tune's bytes as they are
                entries.append((f"base_model.model.{info.name}", info.dtype, list(info.shape),
                                total, total + info.n_bytes))
                _copy_bytes(info, fh)
                total += info.n_bytes
        if not entries:
            raise LadleValueError(f"{tuned_path}: every module lost all its singular values "
                                  f"to sv_epsilon={sv_epsilon}; nothing to save")
        with open(output.partial / ADAPTER_FILE, "wb") as fh, open(body, "rb") as src:
            fh.write(_core.serialize_header(entries, [("format", "pt")]))
            shutil.copyfileobj(src, fh, 1 << 24)
            fh.flush()
            os.fsync(fh.fileno())
        body.unlink()
        if progress and targets:
            print()
        # Full names: PEFT matches modules_to_save by suffix, so "norm" would also
        # claim every *_layernorm, whose weights the adapter does not hold.
        saved_modules = sorted({i.name.rpartition(".")[0] for i in saved})
        config = _adapter_config(b.path, [t for t in targets if t.module in ranks], rank,
                                 ranks, saved_modules)
        (output.partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    tuned_path = f.path
    _, dest = write_atomically(output, work)
    return LoraReport(dest, len(targets) - len(dropped), rank, skipped,
                      time.perf_counter() - t0, dropped)


def _out_dtype(dtype: str | None) -> str | None:
    from ..engine.plan import normalize_dtype

    dt = normalize_dtype(dtype)
    if dt is not None and dt not in ("F32", "F16", "BF16"):
        raise LadleValueError(f"LoRA factors are bf16, f16 or f32, got {dtype!r}")
    return dt


def _modules_to_save(tuned: Checkpoint, modules: list[str]) -> list[TensorInfo]:
    """The fine-tune's tensors of the modules saved at full rank: a tensor
    ``a.b.norm.weight`` belongs to module ``a.b.norm``, which matches ``a.b.norm`` or
    ``norm``. A name that matches no tensor is an error."""
    wanted = set(modules)
    out, hit = [], set()
    for name, info in tuned.tensors.items():
        module = name.rpartition(".")[0]
        match = {module, module.rpartition(".")[2]} & wanted
        if match:
            out.append(info)
            hit |= match
    unknown = sorted(wanted - hit)
    if unknown:
        raise LadleValueError(f"{tuned.path}: modules_to_save {unknown} match no tensor "
                              f"(a module's full name or its last component, e.g. lm_head)")
    return out


def _targets(base: Checkpoint, tuned: Checkpoint, rank: int, include, exclude,
             embed_lora: bool = False, saved: set[str] | None = None
             ) -> tuple[list[_Target], list[str]]:
    """The 2-D float weights to factor (base and fine-tuned agree on shape), and
    the names of other tensors that differ from the base (reported, not saved).
    Tensors in ``saved`` (modules_to_save) are neither."""
    missing = sorted(n for n in tuned.tensors if n not in base.tensors and selected(
        n, include, exclude))
    if missing:
        raise MismatchError(f"{base.path}: {len(missing)} tensor(s) of {tuned.path} are "
                            f"missing, e.g. '{missing[0]}'")
    targets, skipped = [], []
    for name, info in tuned.tensors.items():
        if not selected(name, include, exclude) or name in (saved or ()):
            continue
        b = base.tensors[name]
        if b.shape != info.shape:
            raise MismatchError(f"tensor '{name}': shape {list(info.shape)} in {info.file} "
                                f"differs from {list(b.shape)} in {b.file}")
        embedding = bool(_EMBED_IN.search(name))
        factorable = (len(info.shape) == 2 and name.endswith(".weight")
                      and info.dtype in _TORCH_DTYPES and b.dtype in _TORCH_DTYPES
                      and (embed_lora or not (embedding or _HEAD.search(name))))
        if factorable:
            targets.append(_Target(name.removesuffix(".weight"), b, info,
                                   min(rank, *info.shape), transpose=embedding))
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


def _factor(t: _Target, device: str, method: str, niter: int, sv_epsilon: float = 0.0):
    """(lora_A, lora_B) in fp32 for one weight: √S·Vᵀ and U·√S of the top-r SVD of
    its delta (of the transposed delta for an embedding), r lowered to the number
    of singular values above ``sv_epsilon`` when it is positive."""
    import torch

    delta = (load_tensor(t.tuned).to(device, torch.float32)
             - load_tensor(t.base).to(device, torch.float32))
    if t.transpose:
        delta = delta.T
    if method == "lowrank":
        u, s, v = torch.svd_lowrank(delta, q=min(t.rank + 8, *delta.shape), niter=niter)
        vh = v.mT
    else:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = t.rank
    if sv_epsilon > 0:
        rank = min(rank, int((s > sv_epsilon).sum()))
    root = torch.sqrt(s[:rank])
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def _copy_bytes(info: TensorInfo, fh, chunk: int = 1 << 24) -> None:
    """Append ``info``'s bytes to ``fh``, ``chunk`` bytes at a time."""
    with open(info.file, "rb") as src:
        src.seek(info.offset)
        for start in range(0, info.n_bytes, chunk):
            fh.write(src.read(min(chunk, info.n_bytes - start)))


def _adapter_config(base_path: Path, targets: list[_Target], rank: int,
                    ranks: dict[str, int], modules_to_save: list[str] | None) -> dict:
    """PEFT's LoraConfig as JSON: scaling lora_alpha / r = 1 for every module."""
    smaller = {t.module: ranks[t.module] for t in targets if ranks[t.module] != rank}
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
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
    }
