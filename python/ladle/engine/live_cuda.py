"""Streaming Σ_k w_k θ_k into a model whose tensors live on a CUDA device.

The engine writes host memory, so :class:`StagedLoader` runs it chunk by chunk into
one pinned host staging pool (at most ``memory_budget`` bytes, or the largest single
tensor) and copies each chunk into the module's device tensors before the next
chunk reuses the pool: no state dict, no second copy of the model in host memory,
and the same fp32 arithmetic and rounding as :func:`ladle.load_into` on the CPU, so
the device tensors end up bit-identical to a CPU load. Key matching (prefixes, tied
parameters, the strict key diff) is decided once for the whole model.

When the endpoints of a sweep are themselves on the GPU, :func:`device_sum_sweeper`
uses ladle's CUDA kernel (:class:`ladle.engine.cuda.DeviceSum`) instead: one launch per α.

Example:
    >>> model = MyNet().cuda()                                         # doctest: +SKIP
    >>> ladle.load_into(model, ["zs.safetensors", "ft.safetensors"], [0.5, 0.5])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import LadleValueError
from ..formats.keymap import KeyMap, key_diff, make_key_fn
from ..formats.sources import TensorSet, is_module, module_tensors, target_set
from ._units import parse_size
from .live import Loader, Weights

_ALIGN = 64  # staging views start on 64-byte boundaries (any dtype's alignment)


def on_cuda(obj: Any) -> bool:
    """Whether a module or dict of tensors holds any tensor on a CUDA device."""
    tensors = module_tensors(obj) if is_module(obj) else obj if isinstance(obj, dict) else {}
    return any(getattr(getattr(t, "device", None), "type", "cpu") == "cuda"
               for t in tensors.values())


class StagedLoader:
    """A reusable plan from N inputs into a module's tensors (any device) through a
    pinned host staging pool, one chunk of at most ``memory_budget`` bytes at a time.

    Args:
        module: an ``nn.Module`` or a dict of tensors to overwrite in place.
        inputs: tensor sets read (checkpoints, CPU modules, dicts).
        key_map, strict, threads, memory_budget: as :class:`ladle.engine.live.Loader`.
    """

    def __init__(self, module: Any, inputs: Sequence[TensorSet], *, key_map: KeyMap = None,
                 strict: bool = True, threads: int = 0, memory_budget: int | str = "256MiB"):
        import torch

        if not inputs:
            raise LadleValueError("no inputs given")
        tensors = module_tensors(module) if is_module(module) else dict(module)
        for name, t in tensors.items():
            if not t.is_contiguous():
                raise LadleValueError(f"tensor '{name}' is not contiguous and cannot be "
                                      f"written in place")
        groups = _alias_groups(tensors)
        fns = [make_key_fn(key_map, list(tensors), s.tensors) for s in inputs]
        if strict:
            _check_keys(tensors, inputs, fns)
        chunks = _pack(groups, parse_size(memory_budget))
        pool_bytes = max(_chunk_bytes(c) for c in chunks) if chunks else 0
        pin = torch.cuda.is_available()
        self.pool = torch.empty(max(pool_bytes, 1), dtype=torch.uint8, pin_memory=pin)
        self.parts: list[tuple[Loader, list[tuple[list[str], Any, Any]]]] = []
        for chunk in chunks:
            views: dict[str, Any] = {}
            pairs = []
            offset = 0
            for names, t in chunk:
                n_bytes = t.numel() * t.element_size()
                view = self.pool[offset:offset + n_bytes].view(t.dtype).view(t.shape)
                for n in names:
                    views[n] = view
                pairs.append((names, view, t))
                offset += -(-n_bytes // _ALIGN) * _ALIGN
            in_chunk = set(views)
            maps = [_restricted(f, in_chunk) for f in fns]
            loader = Loader(target_set(views), inputs, key_map=maps, strict=False,
                            threads=threads, memory_budget=memory_budget)
            self.parts.append((loader, pairs))

    def run(self, weights: Weights, *, post_scale: float = 1.0, int_policy: str = "first",
            floats: bool = True, nonfloats: bool = True, check_finite: bool = False) -> dict:
        """:meth:`ladle.engine.live.Loader.run` chunk by chunk; each chunk's staged tensors
        are copied to the device before the pool is reused.

        Returns:
            The engine statistics summed over the chunks.
        """
        import torch

        total = {"bytes_read": 0, "bytes_written": 0, "seconds": 0.0}
        for loader, pairs in self.parts:
            stats = loader.run(weights, post_scale=post_scale, int_policy=int_policy,
                               floats=floats, nonfloats=nonfloats, check_finite=check_finite)
            for k in total:
                total[k] += stats.get(k, 0)
            written = _written(loader, floats, nonfloats)
            with torch.no_grad():
                for names, view, t in pairs:
                    if names[0] in written:
                        t.copy_(view, non_blocking=True)
            if any(t.is_cuda for _, _, t in pairs):
                torch.cuda.synchronize()  # the next chunk overwrites the pool
        return total


def _alias_groups(tensors: dict[str, Any]) -> list[tuple[list[str], Any]]:
    """Names that share storage, offset, dtype and shape (tied weights), grouped."""
    groups: dict[Any, tuple[list[str], Any]] = {}
    for name, t in tensors.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape))
        if key in groups:
            groups[key][0].append(name)
        else:
            groups[key] = ([name], t)
    return list(groups.values())


def _chunk_bytes(chunk: list[tuple[list[str], Any]]) -> int:
    return sum(-(-(t.numel() * t.element_size()) // _ALIGN) * _ALIGN for _, t in chunk)


def _pack(groups: list[tuple[list[str], Any]], budget: int) -> list[list[tuple[list[str], Any]]]:
    """Consecutive groups in chunks of at most ``budget`` bytes (a larger tensor alone)."""
    chunks: list[list[tuple[list[str], Any]]] = []
    current: list[tuple[list[str], Any]] = []
    for g in groups:
        if current and _chunk_bytes(current + [g]) > budget:
            chunks.append(current)
            current = []
        current.append(g)
    if current:
        chunks.append(current)
    return chunks


def _restricted(fn: Callable[[str], str | None], names: set[str]
                ) -> Callable[[str], str | None]:
    """The whole-model key function, limited to one chunk's target names."""
    def key(name: str) -> str | None:
        target = fn(name)
        return target if target in names else None

    return key


def _check_keys(tensors: dict[str, Any], inputs: Sequence[TensorSet],
                fns: list[Callable[[str], str | None]]) -> None:
    """The strict key diff of :class:`ladle.engine.live.Loader`, over the whole model."""
    groups = _alias_groups(tensors)
    for s, fn in zip(inputs, fns):
        found, unexpected = set(), []
        for name in s.tensors:
            target = fn(name)
            if target is None:
                continue
            if target in tensors:
                found.add(target)
            else:
                unexpected.append(name)
        missing = [names[0] for names, _ in groups if not found & set(names)]
        if missing or unexpected:
            raise key_diff(s.label, missing, unexpected)


def _written(loader: Loader, floats: bool, nonfloats: bool) -> set[str]:
    """Canonical names of the targets :meth:`Loader.run` wrote with these options."""
    out = set()
    for g in loader.groups:
        if g.ref.n_elems == 0 or None in g.inputs:
            continue
        if floats if g.ref.is_float else nonfloats:
            out.add(g.name)
    return out


def device_sum_sweeper(module: Any, theta0: Any, theta1: Any) -> Callable[[float], None]:
    """θα = (1 − α)·θ0 + α·θ1 into ``module`` with ladle's CUDA kernel, when θ0 and θ1
    are GPU-resident modules or dicts with the module's names (one launch per α).

    Non-float tensors are copied from θ0 (θ1 at α = 1), as the streaming sweep does.
    """
    from .cuda import DeviceSum

    def tensors(obj: Any) -> dict[str, Any]:
        return module_tensors(obj) if is_module(obj) else dict(obj)

    out, t0, t1 = tensors(module), tensors(theta0), tensors(theta1)
    floats = [n for n, t in out.items() if t.is_floating_point()]
    for label, src in (("theta0", t0), ("theta1", t1)):
        missing = sorted(set(out) - set(src))
        if missing:
            raise LadleValueError(f"{label}: GPU-resident endpoint lacks {missing[:3]}")
    kernel = DeviceSum({n: out[n].data for n in floats}, {n: t0[n] for n in floats},
                       {n: t1[n] for n in floats})

    def apply(alpha: float) -> None:
        import torch

        kernel.interpolate(alpha)
        with torch.no_grad():
            for n, t in out.items():
                if n not in floats:
                    t.copy_((t1 if alpha == 1.0 else t0)[n])

    return apply
