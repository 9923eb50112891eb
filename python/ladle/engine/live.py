"""Stream Σ_k w_k θ_k straight into a live model's parameter and buffer storage.

The :class:`Loader` matches names once (prefix mapping, tied parameters, strict key
checks), registers every input as file or memory sources and every target storage as
a memory sink of one engine plan, and can then run any weights again and again (a
WiSE-FT sweep, greedy-soup steps, learned-soup steps) without re-reading headers and
without building a state dict. torch is imported only by the caller's objects.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from .. import _core
from ..errors import LadleValueError, MismatchError
from ..formats.keymap import KeyMap, key_diff, make_key_fn
from ..formats.sources import TensorRef, TensorSet
from ._units import engine_options
from .kinds import core_enum
from .plan import check_int_policy, check_weights, nonfloat_inputs

Weights = Sequence[float] | Callable[[str], Sequence[float]]


@dataclass
class TargetGroup:
    """One target storage range and every name that refers to it (tied weights)."""

    name: str  # canonical (first) name
    aliases: list[str]
    ref: TensorRef
    inputs: list[TensorRef | None]  # per input, the matched tensor


def alias_groups(targets: TensorSet) -> list[tuple[str, list[str], TensorRef]]:
    """Group target names that share storage, offset, dtype and shape."""
    groups: dict[Hashable, tuple[str, list[str], TensorRef]] = {}
    for name, ref in targets.tensors.items():
        key = (ref.source, ref.offset, ref.dtype, ref.shape)
        if key in groups:
            groups[key][1].append(name)
        else:
            groups[key] = (name, [name], ref)
    return list(groups.values())


class Loader:
    """Reusable streaming plan from N inputs into a set of targets.

    Args:
        targets: the tensors written (e.g. :func:`ladle.formats.sources.from_module`).
        inputs: tensor sets read (checkpoints, modules, dicts, accumulators).
        key_map: input-key -> target-key mapping (see :mod:`ladle.formats.keymap`), or a
            list with one mapping per input.
        strict: raise :class:`MismatchError` with a key diff unless every target
            is found in every input and every input key is used.
        threads: engine threads (0: all cores).
        memory_budget: engine buffer budget, e.g. ``"256MiB"``.

    Example:
        >>> loader = Loader(from_module(model), [open_input("a/"), open_input("b/")])
        >>> loader.run([0.5, 0.5])   # doctest: +SKIP
    """

    def __init__(self, targets: TensorSet, inputs: Sequence[TensorSet], *,
                 key_map: KeyMap | list[KeyMap] = None, strict: bool = True, threads: int = 0,
                 memory_budget: int | str = "256MiB"):
        if not inputs:
            raise LadleValueError("no inputs given")
        self.targets = targets
        self.inputs = list(inputs)
        self.threads, self.memory_budget, _ = engine_options(threads, memory_budget)
        self.groups = self._match(key_map, strict)
        self.plan = _core.Plan()
        self.registry: dict[Hashable, int] = {}
        for s in self.inputs:
            s.register(self.plan, self.registry)
        self.sinks = {key: self.plan.add_memory_sink(spec.label, spec.address, spec.n_bytes)
                      for key, spec in targets.sources.items()}

    def _match(self, key_map: KeyMap | list[KeyMap], strict: bool) -> list[TargetGroup]:
        raw = alias_groups(self.targets)
        owner = {alias: i for i, (_, aliases, _) in enumerate(raw) for alias in aliases}
        per_input: list[list[TensorRef | None]] = []
        maps = list(key_map) if isinstance(key_map, list) else [key_map] * len(self.inputs)
        if len(maps) != len(self.inputs):
            raise LadleValueError(f"got {len(maps)} key maps for {len(self.inputs)} inputs")
        for s, one_map in zip(self.inputs, maps):
            fn = make_key_fn(one_map, self.targets.tensors, s.tensors)
            by_target: dict[str, TensorRef] = {}
            unexpected = []
            for name, ref in s.tensors.items():
                target = fn(name)
                if target is None:
                    continue
                if target not in owner:
                    unexpected.append(name)
                else:
                    by_target.setdefault(target, ref)
            # Tied names whose input values differ: the last name in the model's order
            # wins, as module.load_state_dict copies every key in that order.
            found: list[TensorRef | None] = [
                next((by_target[a] for a in reversed(aliases) if a in by_target), None)
                for _, aliases, _ in raw]
            missing = [raw[i][0] for i, r in enumerate(found) if r is None]
            if strict and (missing or unexpected):
                raise key_diff(s.label, missing, unexpected)
            per_input.append(found)
        groups = []
        for i, (name, aliases, ref) in enumerate(raw):
            refs = [found[i] for found in per_input]
            for s, r in zip(self.inputs, refs):
                if r is not None:
                    _check_compatible(s.label, name, ref, r)
            groups.append(TargetGroup(name, aliases, ref, refs))
        return groups

    @property
    def float_groups(self) -> list[TargetGroup]:
        """Groups the engine combines arithmetically (present in every input)."""
        return [g for g in self.groups if g.ref.is_float and None not in g.inputs]

    def run(self, weights: Weights, *, post_scale: float = 1.0, int_policy: str = "first",
            floats: bool = True, nonfloats: bool = True, check_finite: bool = False) -> dict:
        """Write ``round(post_scale · Σ_k w_k x_k)`` into every target.

        Args:
            weights: one weight per input, or a function of a float target's name
                giving them (non-float targets then treat every input as weighted).
            post_scale: multiplier applied to the fp32 sum before rounding (fp32).
            int_policy: non-float targets, over the inputs with a non-zero weight:
                ``"first"``, ``"max"`` or ``"error"`` (see
                :func:`ladle.engine.plan.nonfloat_inputs`).
            floats: write float targets (False: only non-float ones).
            nonfloats: write non-float targets (False: only float ones).
            check_finite: raise on NaN/Inf.

        Returns:
            The engine's statistics (bytes read/written, seconds, ...).
        """
        check_int_policy(int_policy)
        self.plan.clear_jobs()
        fixed = None if callable(weights) else check_weights(list(weights), len(self.inputs))
        written: list[TargetGroup] = []
        for g in self.groups:
            if g.ref.n_elems == 0 or None in g.inputs:
                continue
            if g.ref.is_float:
                if not floats:
                    continue
                ws = fixed if fixed is not None else check_weights(list(weights(g.name)),
                                                                   len(self.inputs))
                self._add_job(g, "sum", [(r, w) for r, w in zip(g.inputs, ws)], post_scale,
                              written)
            elif nonfloats:
                ws = fixed if fixed is not None else [1.0] * len(self.inputs)
                op, chosen = nonfloat_inputs(g.inputs, ws, int_policy)
                if op == "copy" and len(chosen) == 1 and self._same_memory(chosen[0], g.ref):
                    continue  # copying a tensor onto itself
                self._add_job(g, op, [(r, 1.0) for r in chosen], 1.0, written)
        if self.plan.n_jobs == 0:
            return {"bytes_read": 0, "bytes_written": 0, "seconds": 0.0}
        try:
            return _core.run(self.plan, threads=self.threads, memory_budget=self.memory_budget,
                             check_finite=check_finite)
        finally:  # also after a failure: some chunks may have been written
            self._mark_modified(written)

    def _same_memory(self, ref: TensorRef, target: TensorRef) -> bool:
        a = self.registry.get(ref.source)
        spec = self.targets.sources[target.source]
        src = next((s.sources[ref.source] for s in self.inputs if ref.source in s.sources), None)
        return (a is not None and src is not None and src.path is None
                and src.address + ref.offset == spec.address + target.offset)

    def _mark_modified(self, groups: list[TargetGroup]) -> None:
        """Bump the version counters of the written torch tensors, as an in-place
        ``param.copy_`` under ``no_grad`` would: autograd then refuses a backward
        through values saved before the load instead of silently using new ones."""
        torch = sys.modules.get("torch")
        if torch is None or not self.targets.live:
            return
        for g in groups:
            for alias in g.aliases:
                t = self.targets.live.get(alias)
                if isinstance(t, torch.Tensor) and not t.is_inference():
                    torch.autograd.graph.increment_version(t)

    def _add_job(self, g: TargetGroup, op: str, inputs: list[tuple[TensorRef, float]],
                 post_scale: float, written: list[TargetGroup] | None = None) -> None:
        if written is not None:
            written.append(g)
        self.plan.add_job(g.name, core_enum(_core.JobKind, op, "job op"), g.ref.n_elems,
                          self.sinks[g.ref.source], g.ref.offset, g.ref.dtype,
                          [_core.Input(self.registry[r.source], r.offset, r.dtype, w)
                           for r, w in inputs],
                          post_scale)

    def dot(self, lhs: TensorSet, names: Sequence[str] | None = None) -> dict[str, list[float]]:
        """fp64 dot products ``<lhs[name], x_k[name]>`` for every input k.

        Args:
            lhs: tensors by target name (e.g. gradients), float dtype, target shapes.
            names: restrict to these target names (default: every name in ``lhs``).

        Returns:
            name -> one float per input.
        """
        lhs.register(self.plan, self.registry)
        by_name = {g.name: g for g in self.float_groups}
        order = []
        for name in names if names is not None else list(lhs.tensors):
            g, ref = by_name.get(name), lhs.tensors.get(name)
            if g is None or ref is None or ref.n_elems == 0:
                continue
            if ref.n_elems != g.ref.n_elems:
                raise MismatchError(f"{lhs.label}: tensor '{name}' has {ref.n_elems} elements, "
                                    f"the model has {g.ref.n_elems}")
            self.plan.add_dot(name, ref.n_elems,
                              _core.Input(self.registry[ref.source], ref.offset, ref.dtype),
                              [_core.Input(self.registry[r.source], r.offset, r.dtype)
                               for r in g.inputs])
            order.append(name)
        dot = [_core.JobKind.dot]
        try:
            out = _core.run(self.plan, kinds=dot, threads=self.threads,
                            memory_budget=self.memory_budget)
        finally:
            self.plan.clear_jobs(dot)
        return dict(zip(order, out.get("dots", [])))


def _check_compatible(label: str, name: str, target: TensorRef, ref: TensorRef) -> None:
    if tuple(ref.shape) != tuple(target.shape):
        raise MismatchError(f"{label}: tensor '{ref.name}' has shape {list(ref.shape)}, the "
                            f"model's '{name}' has {list(target.shape)}")
    if target.is_float and not ref.is_float:
        raise MismatchError(f"{label}: tensor '{ref.name}' is {ref.dtype}, the model's "
                            f"'{name}' is {target.dtype} (float)")
    if not target.is_float and ref.dtype != target.dtype:
        raise MismatchError(f"{label}: tensor '{ref.name}' is {ref.dtype}, the model's "
                            f"'{name}' is {target.dtype}; non-float tensors are copied as is")
