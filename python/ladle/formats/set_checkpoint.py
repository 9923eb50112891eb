"""Any tensor set (a live ``nn.Module``, a dict of torch tensors or numpy arrays, a
:class:`~ladle.formats.sources.TensorSet`) seen as a :class:`~ladle.formats.checkpoint.Checkpoint`,
so the method planner and runner, written against checkpoint headers, take every
input kind without a copy: each tensor's ``TensorInfo.file`` is the key of the
memory (or file) source that holds it, and :func:`ladle.formats.checkpoint.add_file_sources`
registers those sources through :meth:`SetCheckpoint.register`.

What such an input cannot do is named, not silently dropped: it has no files to
fingerprint, so ``resume`` cannot prove an interrupted run read the same bytes, and
other ranks of a distributed run cannot see this process's memory.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LadleValueError
from .checkpoint import Checkpoint, open_checkpoint
from .sources import TensorSet, is_module, open_input
from .tensor_info import TensorInfo


@dataclass(frozen=True)
class SourceKey:
    """Stands where a checkpoint has a file: hashable, printed as its label."""

    label: str
    key: Hashable

    def __str__(self) -> str:
        return self.label


@dataclass
class SetCheckpoint(Checkpoint):
    """A checkpoint whose tensors live in a :class:`TensorSet`'s sources."""

    tensor_set: TensorSet | None = field(default=None, repr=False)

    def register(self, core_plan: Any, registry: dict) -> None:
        """Add the set's sources to ``core_plan`` under this checkpoint's keys."""
        assert self.tensor_set is not None
        keys: dict[Hashable, int] = {}
        self.tensor_set.register(core_plan, keys)
        for key, index in keys.items():
            registry[SourceKey(self.tensor_set.sources[key].label, key)] = index

    def __repr__(self) -> str:
        return f"SetCheckpoint({self.tensor_set!r})"


def set_checkpoint(tensor_set: TensorSet) -> SetCheckpoint:
    """``tensor_set`` as a checkpoint (no data is read or copied)."""
    labels = {key: spec.label for key, spec in tensor_set.sources.items()}
    tensors = {name: TensorInfo(name, ref.dtype, tuple(ref.shape),
                                SourceKey(labels[ref.source], ref.source), ref.offset,
                                ref.n_bytes)
               for name, ref in tensor_set.tensors.items()}
    return SetCheckpoint(Path(tensor_set.label), tensors, {}, {}, [], tensor_set)


def is_in_memory(obj: Any) -> bool:
    """True for inputs that are not files: modules, dicts, tensor sets."""
    return is_module(obj) or isinstance(obj, (Mapping, TensorSet))


def open_any(obj: Any, trust_pickle: bool = False) -> Checkpoint:
    """A path, Checkpoint, module, dict of tensors or TensorSet as a checkpoint.

    Files keep the header-only path of :func:`ladle.open` (``.pt``/``.bin`` are
    memory-mapped there too); everything else is wrapped in place.
    """
    if isinstance(obj, Checkpoint):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_checkpoint(obj, trust_pickle)
    if is_in_memory(obj):
        return set_checkpoint(open_input(obj))
    raise LadleValueError(f"cannot read tensors from a {type(obj).__name__}")


def open_inputs(objs: list[Any]) -> list[Checkpoint]:
    """:func:`open_any` of each, opening an in-memory object passed twice (say as
    base and as a model) once, so :func:`same_input` recognises it."""
    opened: dict[int, Checkpoint] = {}
    out = []
    for obj in objs:
        if is_in_memory(obj):
            if id(obj) not in opened:
                opened[id(obj)] = open_any(obj)
            out.append(opened[id(obj)])
        else:
            out.append(open_any(obj))
    return out


def same_input(a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two opened inputs are the same model: the same files on disk, or
    the same object in memory (labels of dicts repeat, so they never decide)."""
    if isinstance(a, SetCheckpoint) or isinstance(b, SetCheckpoint):
        return a is b
    return Path(a.path).resolve() == Path(b.path).resolve()


def refuse_memory_inputs(ckpts: list[Checkpoint], *, resume: bool, distributed: bool) -> None:
    """Name the option a memory-backed input cannot support, before any work."""
    memory = [c for c in ckpts if isinstance(c, SetCheckpoint)]
    if not memory:
        return
    label = memory[0].tensor_set.label if memory[0].tensor_set else str(memory[0].path)
    if resume:
        raise LadleValueError(f"{label}: resume needs inputs on disk (an in-memory input "
                              f"cannot be checked to be the one the interrupted run read); "
                              f"save it with ladle.save first")
    if distributed:
        raise LadleValueError(f"{label}: a distributed merge needs inputs on disk that every "
                              f"rank can read; save it with ladle.save first")
