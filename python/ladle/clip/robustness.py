"""Effective robustness (SPEC §2.3): fit the baseline β on logit-scaled
(ID accuracy, shifted accuracy) pairs of models trained only on the ID distribution,
then ρ(f) = acc_shift(f) − β(acc_id(f)).

Example:
    >>> fit = fit_logit_linear([0.5, 0.731], [0.269, 0.5])
    >>> round(effective_robustness(0.5, 0.5, fit), 3)
    0.231
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-4


def logit(p: float | np.ndarray) -> float | np.ndarray:
    """ln(p / (1 − p)), with p clipped to [1e-4, 1 − 1e-4]."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    out = np.log(p / (1 - p))
    return float(out) if out.ndim == 0 else out


def sigmoid(z: float | np.ndarray) -> float | np.ndarray:
    """1 / (1 + e^−z)."""
    out = 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))
    return float(out) if out.ndim == 0 else out


@dataclass
class LinearFit:
    """β(x) = sigmoid(a · logit(x) + b), fit by least squares in logit space."""

    a: float
    b: float
    n: int

    def __call__(self, acc_id: float | np.ndarray) -> float | np.ndarray:
        return sigmoid(self.a * logit(acc_id) + self.b)


def fit_logit_linear(acc_id: Sequence[float], acc_shift: Sequence[float]) -> LinearFit:
    """Least-squares line through (logit(acc_id), logit(acc_shift)).

    Args:
        acc_id: accuracies in [0, 1] on the reference distribution.
        acc_shift: the same models' accuracies under shift.

    Returns:
        A :class:`LinearFit`; with one model (or identical x) the slope is 1.

    Example:
        >>> f = fit_logit_linear([0.5, 0.731], [0.269, 0.5])
        >>> round(f.a, 2), round(f.b, 2)
        (1.0, -1.0)
    """
    x, y = logit(np.asarray(acc_id)), logit(np.asarray(acc_shift))
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need equal, non-empty accuracy lists, got {len(x)} and {len(y)}")
    if len(x) == 1 or math.isclose(float(np.ptp(x)), 0.0):
        return LinearFit(1.0, float(np.mean(y - x)), len(x))
    a, b = np.polyfit(x, y, 1)
    return LinearFit(float(a), float(b), len(x))


def effective_robustness(acc_id: float, acc_shift: float, fit: LinearFit) -> float:
    """ρ = acc_shift − β(acc_id); positive means above the baseline line."""
    return float(acc_shift - fit(acc_id))
