"""Paired significance tests between two models' predictions on the same examples
(Model soups Table 4): exact McNemar and a paired permutation test.

Example:
    >>> round(mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0])["p_value"], 3)
    0.25
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import LadleValueError
from ._np import as_array, as_predictions, same_length


def _correct(pred: Any, labels: Any | None, name: str) -> np.ndarray:
    if labels is None:  # already per-example correctness
        a = as_array(pred, name)
        if a.ndim != 1:
            raise LadleValueError(f"{name}: pass labels, or a 1-D array of 0/1 correctness")
        return a.astype(bool)
    return as_predictions(pred, name) == as_predictions(labels, "labels")


def mcnemar_exact(a: Any, b: Any, labels: Any | None = None) -> dict[str, float]:
    """Exact (binomial) McNemar test.

    With b01 = #(A right, B wrong) and b10 = #(A wrong, B right), under H0 the
    discordant outcomes are Binomial(b01 + b10, ½); the two-sided p-value is
    min(1, 2·P[X ≤ min(b01, b10)]), as ``scipy.stats.binomtest(b01, n, 0.5)``.

    Args:
        a, b: predictions (N,) or logits (N, C) with ``labels``, or 0/1 correctness.
        labels: true classes (N,).

    Returns:
        ``a_only`` (b01), ``b_only`` (b10) and ``p_value``.
    """
    ca, cb = _correct(a, labels, "a"), _correct(b, labels, "b")
    same_length(a=ca, b=cb)
    b01, b10 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    n, k = b01 + b10, min(b01, b10)
    if n == 0 or 2 * k == n:
        return {"a_only": float(b01), "b_only": float(b10), "p_value": 1.0}
    log_half_n = -n * math.log(2.0)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n
             for i in range(k + 1)]
    top = max(terms)
    tail = math.exp(top) * math.fsum(math.exp(t - top) for t in terms)
    return {"a_only": float(b01), "b_only": float(b10), "p_value": min(1.0, 2.0 * tail)}


def permutation_test(a: Any, b: Any, labels: Any | None = None, *, n_permutations: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """Paired two-sided permutation test on the mean difference of per-example scores.

    Each permutation swaps A's and B's score on every example with probability ½
    (the null: the two models are exchangeable per example).

    Args:
        a, b: per-example scores (e.g. 0/1 correctness or losses), or predictions /
            logits together with ``labels`` (scores = correctness).
        labels: true classes, when ``a`` and ``b`` are predictions.
        n_permutations: random sign flips drawn.
        seed: random seed.

    Returns:
        ``difference`` (mean A − mean B) and ``p_value`` = (1 + #|d*| ≥ |d|)/(1 + n).
    """
    if labels is None:
        sa, sb = as_array(a, "a").astype(np.float64), as_array(b, "b").astype(np.float64)
    else:
        sa, sb = (_correct(x, labels, name).astype(np.float64) for x, name in ((a, "a"), (b, "b")))
    n = same_length(a=sa, b=sb)
    d = sa - sb
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    hits, done, batch = 0, 0, max(1, min(n_permutations, 2**24 // max(n, 1)))
    while done < n_permutations:
        m = min(batch, n_permutations - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        stats = (signs * d).mean(axis=1)
        hits += int((np.abs(stats) >= abs(observed) - 1e-12).sum())
        done += m
    return {"difference": observed, "p_value": (1 + hits) / (1 + n_permutations)}
