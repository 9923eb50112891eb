"""Calibration (Model soups §5, Fig. B.2): expected calibration error with
equal-mass bins and temperature scaling fitted by minimising the NLL.

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> round(expected_calibration_error(probs, [0, 1], n_bins=1), 3)
    0.15
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import LadleValueError
from ._np import as_logits, as_predictions, cross_entropy, fit_scale, same_length, softmax


def reliability_bins(probs: Any, labels: Any, *, n_bins: int = 15,
                     from_logits: bool = False) -> dict[str, np.ndarray]:
    """Equal-mass confidence bins: what a reliability diagram draws and ECE sums.

    Examples are sorted by confidence (max probability) and split into ``n_bins``
    bins of (nearly) equal count, so every bin has the same statistical weight.

    Args:
        probs: class probabilities (N, C), or logits with ``from_logits=True``.
        labels: true classes (N,).
        n_bins: number of bins (at most N are used).
        from_logits: apply a softmax first.

    Returns:
        ``confidence`` (mean max probability), ``accuracy`` and ``weight``
        (fraction of the examples), one entry per bin, lowest confidence first.

    Example:
        >>> reliability_bins(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 0], n_bins=2)["accuracy"]
        array([0., 1.])
    """
    p = as_logits(probs, "probs")
    if from_logits:
        p = softmax(p)
    y = as_predictions(labels, "labels")
    n = same_length(probs=p, labels=y)
    if n_bins < 1:
        raise LadleValueError(f"n_bins must be positive, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.array_split(np.argsort(conf, kind="stable"), min(n_bins, n))
    return {"confidence": np.array([conf[b].mean() for b in bins]),
            "accuracy": np.array([correct[b].mean() for b in bins]),
            "weight": np.array([len(b) / n for b in bins])}


def expected_calibration_error(probs: Any, labels: Any, *, n_bins: int = 15,
                               from_logits: bool = False) -> float:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over the equal-mass bins of
    :func:`reliability_bins` (same arguments).

    Returns:
        ECE in [0, 1].
    """
    b = reliability_bins(probs, labels, n_bins=n_bins, from_logits=from_logits)
    return float(sum(w * abs(a - c) for w, a, c in zip(b["weight"], b["accuracy"],
                                                         b["confidence"])))


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (convex in 1/T).

    Dividing by T leaves the argmax, hence accuracy, unchanged.
    """
    f = as_logits(logits)
    y = as_predictions(labels, "labels")
    same_length(logits=f, labels=y)
    return 1.0 / fit_scale(f, y)


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    return cross_entropy(as_logits(logits) / temperature, as_predictions(labels, "labels"))


def calibration_report(logits: Any, labels: Any, *, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL and ECE before and after temperature scaling."""
    f = as_logits(logits)
    y = as_predictions(labels, "labels")
    t = fit_temperature(f, y)
    return {"accuracy": float((f.argmax(1) == y).mean()), "nll": nll(f, y),
            "ece": expected_calibration_error(f, y, n_bins=n_bins, from_logits=True),
            "temperature": t, "nll_scaled": nll(f, y, t),
            "ece_scaled": expected_calibration_error(f / t, y, n_bins=n_bins,
                                                     from_logits=True)}
