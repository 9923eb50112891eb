"""WiSE-FT sweeps: load θα = (1 − α)·θ0 + α·θ1 into a live model for every α and
evaluate it, without writing a checkpoint or building a state dict per α."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.live import Loader
from ..errors import LadleValueError
from ..formats.keymap import KeyMap
from ..formats.sources import open_input, target_set
from .results import ResultsLog, as_log

DEFAULT_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass
class SweepPoint:
    """One α of a sweep and what ``evaluate`` returned for it."""

    alpha: float
    score: Any
    seconds: float


def wiseft_sweep(module: Any, theta0: Any, theta1: Any, alphas: Sequence[float] | None = None,
                 evaluate: Callable[[Any], Any] | None = None, *, key_map: KeyMap = None,
                 strict: bool = True, log: ResultsLog | str | None = None,
                 progress: bool = False, threads: int = 0,
                 memory_budget: int | str = "256MiB",
                 int_policy: str = "first") -> list[SweepPoint]:
    """Evaluate the WiSE-FT curve: for each α, stream θα into ``module`` in place.

    Weights are ``(1 − α, α)`` computed in fp64; α = 0 and α = 1 reproduce the
    endpoints bit for bit. Neither endpoint may be ``module`` itself (it is
    overwritten at every α).

    Args:
        module: the live model (CPU).
        theta0, theta1: zero-shot and fine-tuned weights: paths, modules or dicts.
        alphas: mixing coefficients (default 0, 0.05, ..., 1).
        evaluate: ``evaluate(module)`` -> a float or a dict of scores.
        key_map, strict: name matching (see :func:`ladle.load_into`).
        log: JSONL results log.
        progress: tqdm bar over α.
        threads, memory_budget: engine options.
        int_policy: integer/bool buffers (see :func:`ladle.merge`): ``"first"``
            takes θ0's (θ1's at α = 1, where θ0's weight is zero).

    Returns:
        One :class:`SweepPoint` per α, in order.

    Example:
        >>> curve = ladle.wiseft_sweep(model, "zs/", "ft/", evaluate=acc)   # doctest: +SKIP
        >>> best_on_heldout([p.alpha for p in curve], [p.score for p in curve])  # doctest: +SKIP
    """
    if evaluate is None:
        raise LadleValueError("wiseft_sweep needs an evaluate(module) callback")
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if not alphas:
        raise LadleValueError("alphas is empty: a sweep needs at least one alpha")
    if not all(math.isfinite(a) for a in alphas):
        raise LadleValueError(f"alphas must be finite numbers, got {alphas}")
    from ..engine.live_cuda import StagedLoader, device_sum_sweeper, on_cuda

    if on_cuda(module) and on_cuda(theta0) and on_cuda(theta1):
        # GPU-resident endpoints: ladle's CUDA kernel, one launch per α.
        return _sweep(alphas, device_sum_sweeper(module, theta0, theta1), module, evaluate,
                      ["<theta0 on GPU>", "<theta1 on GPU>"], log, progress)
    inputs = [open_input(theta0), open_input(theta1)]
    if on_cuda(module):  # θα staged through pinned host memory into the CUDA tensors
        loader = StagedLoader(module, inputs, key_map=key_map, strict=strict, threads=threads,
                              memory_budget=memory_budget)
    else:
        target = target_set(module)
        overlap = [s.label for s in inputs if set(s.sources) & set(target.sources)]
        if overlap:
            raise LadleValueError(f"{overlap[0]}: an endpoint shares memory with the model "
                                  f"being swept; pass a copy (it would be overwritten at the "
                                  f"first alpha)")
        loader = Loader(target, inputs, key_map=key_map, strict=strict, threads=threads,
                        memory_budget=memory_budget)
    # Non-float buffers come from θ0 (from θ1 at α = 1, where θ0's weight is zero).
    return _sweep(alphas, lambda a: loader.run([1.0 - a, a], int_policy=int_policy), module,
                  evaluate, [s.label for s in inputs], log, progress)


def _sweep(alphas: list[float], load: Callable[[float], Any], module: Any,
           evaluate: Callable[[Any], Any], labels: list[str], log: Any,
           progress: bool) -> list[SweepPoint]:
    """For each α: ``load(α)`` writes θα into ``module``, then ``evaluate(module)``."""
    log = as_log(log)
    points = []
    items = alphas
    if progress:
        from tqdm import tqdm

        items = tqdm(alphas, desc="wise-ft sweep", unit="alpha")
    for alpha in items:
        t0 = time.perf_counter()
        load(alpha)
        score = evaluate(module)
        seconds = time.perf_counter() - t0
        points.append(SweepPoint(float(alpha), score, seconds))
        log.append("wise-ft", ingredients=labels,
                   weights=[1.0 - alpha, alpha], alpha=alpha, score=score, seconds=seconds)
    return points
