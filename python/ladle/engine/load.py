"""``ladle.load_into``: stream Σ_k w_k θ_k into a live model, through the CPU
loader (:class:`ladle.engine.live.Loader`) or, for a model on a CUDA device, the staged
one (:class:`ladle.engine.live_cuda.StagedLoader`). Its own module so that both
loaders stay independent of each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import LadleValueError
from ..formats.keymap import KeyMap
from ..formats.sources import open_input, target_set
from .live import Loader
from .live_cuda import StagedLoader, on_cuda


def load_into(module: Any, checkpoints: Sequence[Any], weights: Sequence[float] | None = None,
              *, key_map: KeyMap = None, strict: bool = True, int_policy: str = "first",
              threads: int = 0, memory_budget: int | str = "256MiB",
              check_finite: bool = False) -> dict:
    """Stream ``Σ_k weights[k] · θ_k`` into ``module``'s parameters and buffers in place.

    Float tensors follow ladle's arithmetic contract (fp32 accumulation in input
    order, one rounding to the parameter's dtype); non-float buffers follow
    ``int_policy``. Weights are checked as :func:`ladle.merge` checks them (finite
    in fp32). Tied parameters are written once; when a checkpoint holds different
    values under tied names, the last name in the model's order wins, as with
    ``module.load_state_dict``. No state dict is built: the engine writes into each
    tensor's existing storage chunk by chunk, then bumps the tensors' version
    counters so autograd refuses a backward through values saved before the load.

    Args:
        module: a ``torch.nn.Module`` (or a dict of tensors) to overwrite; on a CUDA
            device the sum is staged through a pinned host buffer chunk by chunk
            (:mod:`ladle.engine.live_cuda`), with the same bits as on the CPU.
        checkpoints: paths (safetensors file/dir, ``.pt``/``.bin``), Checkpoints,
            live modules or dicts of tensors (read in place, without copies).
        weights: one weight per input (default: 1 for a single input).
        key_map: input-key -> model-key mapping (default: automatic prefixes).
        strict: require the key sets to match (the error lists the diff).
        int_policy: integer/bool buffers (e.g. ``num_batches_tracked``), over the inputs
            with a non-zero weight: ``"first"`` (default) copies the first,
            ``"max"`` takes the elementwise max, ``"error"`` requires them identical.
        threads, memory_budget, check_finite: engine options.

    Returns:
        The engine's statistics.

    Example:
        >>> model = MyNet()                                         # doctest: +SKIP
        >>> ladle.load_into(model, ["zs.safetensors", "ft.pt"], [0.5, 0.5])  # doctest: +SKIP
    """
    if weights is None:
        if len(checkpoints) != 1:
            raise LadleValueError(f"weights are required for {len(checkpoints)} inputs")
        weights = [1.0]
    if on_cuda(module):
        staged = StagedLoader(module, [open_input(c) for c in checkpoints], key_map=key_map,
                              strict=strict, threads=threads, memory_budget=memory_budget)
        return staged.run(weights, int_policy=int_policy, check_finite=check_finite)
    loader = Loader(target_set(module), [open_input(c) for c in checkpoints], key_map=key_map,
                    strict=strict, threads=threads, memory_budget=memory_budget)
    return loader.run(weights, int_policy=int_policy, check_finite=check_finite)
