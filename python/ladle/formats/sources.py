"""Tensor sets: where the bytes of a set of named tensors live, whatever holds them
(a safetensors checkpoint on disk, a live ``nn.Module``, a dict of torch tensors, a
numpy buffer). The engine sees each as file or memory sources plus byte offsets, so
every kind of input and output goes through the same streaming engine without a copy.

torch is never imported here: a torch object can only reach us if the caller has
imported torch already, so ``sys.modules`` tells us whether to look for one.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _core
from ..errors import BackendError, LadleValueError
from .checkpoint import TORCH_SUFFIXES, Checkpoint, open_checkpoint
from .torch_io import check_dense, torch_dtype_name

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

_NUMPY_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


@dataclass(frozen=True)
class TensorRef:
    """One tensor: its dtype and shape and the byte offset inside a source.

    ``file`` is a printable label used in messages (the file path for checkpoints).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Hashable
    offset: int
    n_bytes: int
    file: str = ""

    @property
    def n_elems(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class SourceSpec:
    """A file to memory-map or a caller-owned memory range."""

    label: str
    path: str | None = None
    address: int = 0
    n_bytes: int = 0


@dataclass
class TensorSet:
    """Named tensors and the sources that hold their bytes.

    Attributes:
        label: name used in messages and logs (a path, or e.g. ``<module MLP>``).
        tensors: name -> :class:`TensorRef`, in model order.
        sources: source key -> :class:`SourceSpec`.
        keepalive: objects that own memory sources (tensors, arrays, mmaps).
        live: tensors by name for memory-backed sets (None for files).
    """

    label: str
    tensors: dict[str, TensorRef]
    sources: dict[Hashable, SourceSpec]
    keepalive: list[Any] = field(default_factory=list)
    live: dict[str, Any] | None = None

    def register(self, core_plan: Any, registry: dict[Hashable, int]) -> None:
        """Add this set's sources to ``core_plan`` unless ``registry`` has them."""
        for key, spec in self.sources.items():
            if key in registry:
                continue
            if spec.path is not None:
                registry[key] = core_plan.add_file_source(spec.path, spec.n_bytes)
            else:
                registry[key] = core_plan.add_memory_source(spec.label, spec.address,
                                                            spec.n_bytes)

    @property
    def path(self) -> str:  # duck-types Checkpoint for plan.build_plan
        return self.label

    def __repr__(self) -> str:
        return f"TensorSet({self.label!r}, {len(self.tensors)} tensors)"


def from_checkpoint(ckpt: Checkpoint) -> TensorSet:
    """A safetensors checkpoint (headers already read) as a tensor set."""
    tensors = {name: TensorRef(name, t.dtype, tuple(t.shape), ("file", str(t.file)), t.offset,
                               t.n_bytes, str(t.file))
               for name, t in ckpt.tensors.items()}
    sources: dict[Hashable, SourceSpec] = {
        ("file", str(f)): SourceSpec(str(f), path=str(f), n_bytes=size)
        for f, size in ckpt.file_sizes.items()}
    return TensorSet(str(ckpt.path), tensors, sources)


def _torch():
    return sys.modules.get("torch")


def is_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch)."""
    torch = _torch()
    return torch is not None and isinstance(obj, torch.nn.Module)


def from_tensors(label: str, tensors: Mapping[str, Any], writable: bool = False) -> TensorSet:
    """Torch tensors or numpy arrays in memory as a tensor set, without copies.

    Tensors must live on the CPU; a non-contiguous tensor is the one case that is
    copied (to a contiguous buffer kept alive with the set).

    Args:
        label: name for messages, e.g. ``"<module ViT>"``.
        tensors: name -> torch.Tensor or numpy.ndarray.
        writable: the set will be written to: refuse (rather than copy) tensors
            that are not contiguous.

    Returns:
        A :class:`TensorSet` of memory sources (one per distinct storage).
    """
    refs: dict[str, TensorRef] = {}
    sources: dict[Hashable, SourceSpec] = {}
    keep: list[Any] = []
    live: dict[str, Any] = {}
    for name, t in tensors.items():
        if hasattr(t, "data_ptr"):
            check_dense(label, name, t)
            if writable and not t.is_contiguous():
                raise LadleValueError(f"{label}: tensor '{name}' is not contiguous and cannot "
                                      f"be written in place")
            ref, key, spec, t = _torch_ref(label, name, t)
        elif hasattr(t, "__array_interface__"):
            ref, key, spec = _numpy_ref(label, name, t)
        else:
            raise LadleValueError(f"{label}: tensor '{name}' is a {type(t).__name__}, "
                                  f"not a torch tensor or numpy array")
        refs[name] = ref
        live[name] = t
        keep.append(t)
        if key not in sources:
            sources[key] = spec
    return TensorSet(label, refs, sources, keep, live)



def _torch_ref(label: str, name: str, t: Any) -> tuple[TensorRef, Hashable, SourceSpec, Any]:
    if t.device.type != "cpu":
        raise BackendError(f"{label}: tensor '{name}' is on {t.device}; only CPU tensors can be "
                           f"streamed in this build")
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    dtype = torch_dtype_name(t)
    n_bytes = t.numel() * t.element_size()
    storage = t.untyped_storage()
    base = storage.data_ptr()
    key = ("mem", base, storage.nbytes())
    spec = SourceSpec(f"{label} (memory at 0x{base:x})", address=base, n_bytes=storage.nbytes())
    ref = TensorRef(name, dtype, tuple(t.shape), key, t.data_ptr() - base if n_bytes else 0,
                    n_bytes, label)
    return ref, key, spec, t


def _numpy_ref(label: str, name: str, a: Any) -> tuple[TensorRef, Hashable, SourceSpec]:
    if not a.flags["C_CONTIGUOUS"]:
        raise LadleValueError(f"{label}: array '{name}' is not C-contiguous")
    dtype = _NUMPY_TO_ST.get(str(a.dtype))
    if dtype is None:
        raise LadleValueError(f"{label}: array '{name}' has unsupported dtype {a.dtype}")
    address = a.__array_interface__["data"][0]
    key = ("mem", address, a.nbytes)
    spec = SourceSpec(f"{label} (memory at 0x{address:x})", address=address, n_bytes=a.nbytes)
    return TensorRef(name, dtype, tuple(a.shape), key, 0, a.nbytes, label), key, spec


def module_tensors(module: Any) -> dict[str, Any]:
    """The tensors ``module.state_dict()`` would hold, by the same names, without
    calling it: parameters and persistent buffers, tied ones listed under every name.
    """
    out: dict[str, Any] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for name, p in sub._parameters.items():
            if p is not None:
                out[dot + name] = p
        for name, b in sub._buffers.items():
            if b is not None and name not in sub._non_persistent_buffers_set:
                out[dot + name] = b
    return out


def from_module(module: Any, label: str | None = None, writable: bool = False) -> TensorSet:
    """A live ``nn.Module``'s parameters and persistent buffers as a tensor set."""
    return from_tensors(label or f"<module {type(module).__name__}>", module_tensors(module),
                        writable)


def target_set(obj: Any) -> TensorSet:
    """A module or dict of tensors to be overwritten in place, as a tensor set."""
    if isinstance(obj, TensorSet):
        return obj
    if is_module(obj):
        return from_module(obj, writable=True)
    if isinstance(obj, Mapping):
        return from_tensors(f"<dict of {len(obj)} tensors>", obj, writable=True)
    raise LadleValueError(f"cannot load tensors into a {type(obj).__name__}")


def open_input(obj: Any, label: str | None = None) -> TensorSet:
    """Any supported input as a :class:`TensorSet`.

    Args:
        obj: a path (``.safetensors`` file, HF directory, ``.pt``/``.bin``), a
            :class:`~ladle.Checkpoint`, an ``nn.Module``, a dict of tensors, or a
            TensorSet.
        label: overrides the name used in messages.

    Returns:
        The tensor set; no tensor data is read.

    Example:
        >>> open_input("model.safetensors").tensors["w"].shape   # doctest: +SKIP
    """
    if isinstance(obj, TensorSet):
        return obj
    if isinstance(obj, Checkpoint):
        return from_checkpoint(obj)
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_file() and path.suffix in TORCH_SUFFIXES:
            from .torch_io import load_torch_checkpoint

            return from_tensors(label or str(path), load_torch_checkpoint(path))
        return from_checkpoint(open_checkpoint(path))
    if is_module(obj):
        return from_module(obj, label)
    if isinstance(obj, Mapping):
        return from_tensors(label or f"<dict of {len(obj)} tensors>", obj)
    raise LadleValueError(f"cannot read tensors from a {type(obj).__name__}")


def dtype_item_bytes(dtype: str) -> int:
    """Bytes per element of a safetensors dtype."""
    return max(1, _core.dtype_n_bits(dtype) // 8)
