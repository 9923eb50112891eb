"""Small numpy helpers shared by the analysis modules (no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import LadleValueError


def as_array(x: Any, name: str = "array") -> np.ndarray:
    """A float64 numpy copy of an array, list or (CPU or CUDA) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size == 0:
        raise LadleValueError(f"{name} is empty")
    return a


def as_logits(x: Any, name: str = "logits") -> np.ndarray:
    """A 2-D float64 array of shape (examples, classes)."""
    a = as_array(x, name).astype(np.float64)
    if a.ndim != 2:
        raise LadleValueError(f"{name} must be 2-D (examples, classes), got shape {a.shape}")
    return a


def as_predictions(x: Any, name: str = "predictions") -> np.ndarray:
    """Class indices: 1-D integer labels as given, or the argmax of 2-D logits."""
    a = as_array(x, name)
    if a.ndim == 2:
        return a.argmax(axis=1)
    if a.ndim != 1:
        raise LadleValueError(f"{name} must be labels (N,) or logits (N, C), got {a.shape}")
    return a.astype(np.int64)


def same_length(**arrays: np.ndarray) -> int:
    """Check that every array has the same number of examples; return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise LadleValueError(f"example counts differ: {lengths}")
    return next(iter(lengths.values()))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``log Σ exp f − f_y`` (SPEC §1.6's ℓ)."""
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def fit_scale(logits: np.ndarray, labels: np.ndarray, *, iters: int = 100,
              tol: float = 1e-12) -> float:
    """β > 0 minimising ``mean ℓ(β·f, y)`` (convex in β): safeguarded Newton.

    dL/dβ = E[E_p f − f_y] and d²L/dβ² = E[Var_p f] ≥ 0 with p = softmax(β f); a
    bracket [lo, hi] keeps every step inside the region where the minimum lies.
    """
    idx = np.arange(len(labels))
    fy = logits[idx, labels]

    def grad_hess(beta: float) -> tuple[float, float]:
        p = softmax(beta * logits)
        mean = (p * logits).sum(axis=1)
        var = (p * logits ** 2).sum(axis=1) - mean ** 2
        return float((mean - fy).mean()), float(np.maximum(var, 0.0).mean())

    lo, hi = 0.0, 1.0
    while grad_hess(hi)[0] < 0 and hi < 1e6:  # minimum lies beyond hi
        lo, hi = hi, hi * 4
    beta = min(1.0, hi)
    for _ in range(iters):
        g, h = grad_hess(beta)
        if abs(g) < tol:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else float("nan")
        beta = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < tol * max(1.0, hi):
            break
    return float(beta)
