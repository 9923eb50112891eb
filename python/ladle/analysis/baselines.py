"""Cheap baselines of WiSE-FT §4.2 and Model soups App L (SPEC §1.4): output-space,
softmax and random-interpolation ensembles of two logit sets, the EMA update, and
WiSE-FT applied to a soup.

Example:
    >>> import numpy as np
    >>> output_ensemble(np.zeros((1, 2)), np.ones((1, 2)), 0.25).tolist()
    [[0.25, 0.25]]
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

from ..errors import LadleValueError
from ._np import as_logits, softmax


def _pair(f0: Any, f1: Any, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_logits(f0, "f0"), as_logits(f1, "f1")
    if a.shape != b.shape:
        raise LadleValueError(f"logit shapes differ: {a.shape} vs {b.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise LadleValueError(f"alpha must lie in [0, 1], got {alpha}")
    return a, b


def output_ensemble(f0: Any, f1: Any, alpha: float) -> np.ndarray:
    """(1 − α)·f(x, θ0) + α·f(x, θ1): the logit ensemble (two forward passes)."""
    a, b = _pair(f0, f1, alpha)
    return (1.0 - alpha) * a + alpha * b


def softmax_ensemble(f0: Any, f1: Any, alpha: float) -> np.ndarray:
    """(1 − α)·softmax f(x, θ0) + α·softmax f(x, θ1): mixed probabilities."""
    a, b = _pair(f0, f1, alpha)
    return (1.0 - alpha) * softmax(a) + alpha * softmax(b)


def random_interpolation(f0: Any, f1: Any, alpha: float, *, seed: int = 0) -> np.ndarray:
    """Per example, ξ ~ Bernoulli(α) picks f(x, θ1) (ξ = 1) or f(x, θ0) (a coin flip
    between the two heads)."""
    a, b = _pair(f0, f1, alpha)
    xi = np.random.default_rng(seed).random(len(a)) < alpha
    return np.where(xi[:, None], b, a)


def ema_update(ema: MutableMapping[str, Any], params: MutableMapping[str, Any] | Any,
               decay: float) -> MutableMapping[str, Any]:
    """One EMA step, in place: ema ← decay·ema + (1 − decay)·θ for every tensor.

    Args:
        ema: name -> tensor/array holding the running average (updated in place).
        params: name -> tensor/array of the current iterate, or an ``nn.Module``.
        decay: β in [0, 1].

    Returns:
        ``ema``.
    """
    if not 0.0 <= decay <= 1.0:
        raise LadleValueError(f"decay must lie in [0, 1], got {decay}")
    if hasattr(params, "state_dict"):
        params = params.state_dict()
    for name, avg in ema.items():
        x = params[name]
        if hasattr(avg, "mul_"):
            import torch

            with torch.no_grad():
                if avg.is_floating_point():
                    avg.mul_(decay).add_(x.to(avg.dtype), alpha=1.0 - decay)
                else:
                    avg.copy_(x)
        elif np.issubdtype(np.asarray(avg).dtype, np.floating):
            avg *= decay
            avg += (1.0 - decay) * np.asarray(x, dtype=avg.dtype)
        else:
            avg[...] = x
    return ema


def ema_weights(n: int, decay: float) -> list[float]:
    """Weights w_k of checkpoints θ_1..θ_n such that Σ w_k θ_k is the EMA started at
    θ_1 (EMA_1 = θ_1, EMA_k = decay·EMA_{k−1} + (1 − decay)·θ_k); they sum to one,
    so ``ladle.merge(checkpoints, ema_weights(n, d), out)`` streams the EMA.

    Example:
        >>> ema_weights(3, 0.5)
        [0.25, 0.25, 0.5]
    """
    if n < 1:
        raise LadleValueError("need at least one checkpoint")
    return [decay ** (n - 1)] + [(1.0 - decay) * decay ** (n - 1 - k) for k in range(1, n)]


def wiseft_soup(theta0: Any, soup: Any | Sequence[Any], alpha: float, out: Any,
                **options: Any):
    """WiSE-FT applied to a soup (Model soups App D): (1 − α)·θ0 + α·θ_soup.

    Args:
        theta0: the zero-shot / pre-trained checkpoint.
        soup: a soup checkpoint, or a list of ingredients (then the uniform soup is
            formed in the same single streamed pass: weights (1 − α, α/k, …)).
        alpha: 1 reproduces the soup, 0 reproduces θ0.
        out: output path; ``options`` are those of :func:`ladle.merge`.

    Returns:
        The :class:`ladle.MergeReport`.
    """
    from ..methods.merge import interpolate, merge

    if isinstance(soup, (list, tuple)):
        k = len(soup)
        if k == 0:
            raise LadleValueError("the soup has no ingredients")
        options.setdefault("method", f"wise-ft-soup alpha={alpha!r} k={k}")
        return merge([theta0, *soup], [1.0 - alpha] + [alpha / k] * k, out, **options)
    return interpolate(theta0, soup, alpha, out, **options)
