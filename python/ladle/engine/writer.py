"""Write tensors from any tensor sets (live modules, dicts, accumulators, files) to
sharded safetensors through the same engine and crash-safe output directory as
:func:`ladle.merge`: ``ladle.save`` of a live model, merges whose inputs are live
models, and the final greedy/learned soups with their recipe in the metadata.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _core
from ..errors import LadleValueError
from ..formats.sources import TensorRef, TensorSet, open_input
from ._units import engine_options
from .kinds import core_enum
from .merge_report import MergeReport
from .output import OutputDir, checked_output, write_atomically
from .path_safety import input_paths
from .plan import (
    OutputTensor,
    build_plan,
    check_int_policy,
    check_weights,
    describe,
    layout_shards,
)

PathLike = str | os.PathLike


@dataclass
class WriteTensor(OutputTensor):
    """An output tensor with the fp32 multiplier applied before rounding."""

    post_scale: float = 1.0


def write_tensors(out: PathLike, tensors: Sequence[OutputTensor], sets: Sequence[TensorSet], *,
                  metadata: dict[str, str] | None = None, max_shard_size: int | str = "5GB",
                  overwrite: bool = False, threads: int = 0,
                  memory_budget: int | str = "256MiB", check_finite: bool = False) -> dict:
    """Run output tensors (ops over :class:`TensorRef` inputs) into ``out``.

    Args:
        out: ``*.safetensors`` (one file) or a directory (HF sharded layout).
        tensors: what to write; each input's ``source`` must belong to ``sets``.
        sets: the tensor sets that own the inputs' sources.
        metadata: safetensors metadata (``format: pt`` is added).
        max_shard_size, overwrite, threads, memory_budget, check_finite: as for merge.

    Returns:
        dict(out, n_tensors, n_shards, bytes_read, bytes_written, seconds).
    """
    threads, budget, shard_bytes = engine_options(threads, memory_budget, max_shard_size)
    output = OutputDir(out, overwrite=overwrite, inputs=input_paths(sets))
    tensors = list(tensors)
    shards, _ = layout_shards(tensors, shard_bytes, output.single_file, metadata)
    t0 = time.perf_counter()

    def work(output: OutputDir) -> dict:
        plan = _core.Plan()
        registry: dict[Hashable, int] = {}
        for s in sets:
            s.register(plan, registry)
        sinks = [plan.add_file_sink(str(output.shard_path(s.file_name)), s.n_bytes, s.header)
                 for s in shards]
        for t in tensors:
            if t.n_elems == 0:
                continue
            scale = getattr(t, "post_scale", 1.0)
            plan.add_job(t.name, core_enum(_core.JobKind, t.op, "job op"), t.n_elems,
                         sinks[t.shard], len(shards[t.shard].header) + t.offset, t.dtype,
                         [_core.Input(registry[r.source], r.offset, r.dtype, w)
                          for r, w in t.inputs], scale)
        stats = _core.run(plan, threads=threads, memory_budget=budget,
                          check_finite=check_finite)
        plan.finish_sinks()
        if len(shards) > 1:
            output.write_index({t.name: shards[t.shard].file_name for t in tensors},
                               sum(t.n_bytes for t in tensors))
        return stats

    stats, dest = write_atomically(output, work)
    return {"out": dest, "n_tensors": len(tensors), "n_shards": len(shards),
            "bytes_read": stats["bytes_read"], "bytes_written": stats["bytes_written"],
            "seconds": time.perf_counter() - t0}


def copy_tensor(name: str, ref: TensorRef) -> WriteTensor:
    """An output tensor that copies ``ref`` byte for byte."""
    return WriteTensor(name, ref.dtype, tuple(ref.shape), "copy", [(ref, 1.0)], ref.n_bytes,
                       ref.n_elems)


def save(obj: Any, out: PathLike, *, max_shard_size: int | str = "5GB",
         metadata: dict[str, str] | None = None, overwrite: bool = False,
         threads: int = 0) -> Path:
    """Save a live model or a dict of tensors as (sharded) safetensors, without
    building a state dict: the engine copies each tensor's storage into the shards.

    Tied tensors (one storage, several names) are stored once under the first name,
    as ``safetensors.torch.save_model`` does; ``ladle.load_into`` restores all names.

    Args:
        obj: an ``nn.Module``, a dict of tensors, or any input :func:`open_input` takes.
        out: ``*.safetensors`` for one file, otherwise a directory.
        max_shard_size: e.g. ``"5GB"`` (directory outputs).
        metadata: extra safetensors metadata.
        overwrite: replace an existing ``out`` once the new one is complete.
        threads: engine threads.

    Returns:
        The destination path.

    Example:
        >>> ladle.save(model, "ckpt/", max_shard_size="2GB")   # doctest: +SKIP
    """
    from .live import alias_groups

    checked_output(out, [obj], overwrite=overwrite)  # before reading the input
    tensors = open_input(obj)
    outputs = [copy_tensor(name, ref) for name, _, ref in alias_groups(tensors)]
    meta = {"ladle_method": "save", **(metadata or {})}
    return write_tensors(out, outputs, [tensors], metadata=meta, max_shard_size=max_shard_size,
                         overwrite=overwrite, threads=threads)["out"]


def merge_live(checkpoints: Sequence[Any], weights: Sequence[float], out: PathLike, *,
               dtype: str | None = None, max_shard_size: int | str = "5GB",
               include: str | list[str] | None = None, exclude: str | list[str] | None = None,
               threads: int = 0, memory_budget: int | str = "256MiB",
               check_finite: bool = False, overwrite: bool = False, progress: bool = True,
               dry_run: bool = False, method: str = "linear", kernel: str = "auto",
               int_policy: str = "first") -> Any:
    """:func:`ladle.merge` for inputs that include live modules, dicts of tensors or
    ``.pt``/``.bin`` files: same plan, same arithmetic, same output layout.
    """
    threads, memory_budget, shard_bytes = engine_options(threads, memory_budget, max_shard_size)
    del progress, kernel  # the live path has no progress bar and uses the default kernel
    sets = [open_input(c) for c in checkpoints]
    weights = check_weights(list(weights), len(sets))
    metadata = {"ladle_method": method, "ladle_inputs": json.dumps([s.label for s in sets]),
                "ladle_weights": json.dumps(weights),
                "ladle_int_policy": check_int_policy(int_policy),
                "ladle_version": _core.build_info()["version"]}
    plan = build_plan(sets, weights, dtype=dtype, include=include, exclude=exclude,
                      max_shard_bytes=shard_bytes,
                      single_file=OutputDir(out).single_file, metadata=metadata,
                      int_policy=int_policy)
    if dry_run:
        print(describe(plan))
        return MergeReport(None, len(plan.tensors), len(plan.shards), plan.bytes_read,
                           plan.bytes_written, 0.0, plan=plan)
    if not plan.tensors:
        raise LadleValueError("nothing to merge")
    stats = write_tensors(out, plan.tensors, sets, metadata=metadata,
                          max_shard_size=max_shard_size, overwrite=overwrite, threads=threads,
                          memory_budget=memory_budget, check_finite=check_finite)
    return MergeReport(stats["out"], stats["n_tensors"], stats["n_shards"], stats["bytes_read"],
                       stats["bytes_written"], stats["seconds"], plan=plan)
