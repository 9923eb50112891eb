"""The shards a run still has to write, opened before any data is: what both the
linear merge (:func:`ladle.methods.merge.execute`) and the method runner
(:func:`ladle.methods.methods.execute_method_plan`) start from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..formats.checkpoint import Checkpoint, add_file_sources
from .output import OutputDir


@dataclass
class ShardSinks:
    """A core plan with every input mapped and every remaining shard as a sink."""

    todo: list[int]  # indices of the shards to write, in order
    core_plan: Any  # _core.Plan
    sources: dict  # input file (or memory source key) -> source index
    sinks: dict[int, int]  # shard index -> sink index

    def by_shard(self, tensors: Iterable[Any]) -> dict[int, list[Any]]:
        """``tensors`` grouped by the remaining shard that holds them."""
        groups: dict[int, list[Any]] = {i: [] for i in self.todo}
        for t in tensors:
            if t.shard in groups:
                groups[t.shard].append(t)
        return groups


def open_shard_sinks(shards: list[Any], ckpts: list[Checkpoint], output: OutputDir,
                     only: list[int] | None) -> ShardSinks:
    """Map the inputs and create and preallocate every shard still to write:
    those not in ``output.finished`` (a resumed run) and, when ``only`` is given
    (one rank of a distributed run), in it. Every shard exists before any data
    is written, so a full disk fails first."""
    todo = [i for i, s in enumerate(shards) if s.file_name not in output.finished
            and (only is None or i in only)]
    core_plan = _core.Plan()
    sources = add_file_sources(core_plan, ckpts)
    sinks = {i: core_plan.add_file_sink(str(output.shard_path(shards[i].file_name)),
                                        shards[i].n_bytes, shards[i].header)
             for i in todo}
    return ShardSinks(todo, core_plan, sources, sinks)
