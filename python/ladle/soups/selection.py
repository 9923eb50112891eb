"""Rules for choosing the WiSE-FT mixing coefficient α from a sweep (SPEC §1.3):
fixed α = 0.5, best on held-out data, best OOD without ID loss (optionally
ε-tolerant), and best ID without OOD loss. All take plain lists, so they apply to
any curve; α = 0 is the zero-shot endpoint and α = 1 the fine-tuned one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import LadleValueError


def _check(alphas: Sequence[float], *curves: Sequence[float]) -> None:
    if not alphas:
        raise LadleValueError("empty sweep")
    for c in curves:
        if len(c) != len(alphas):
            raise LadleValueError(f"{len(c)} scores for {len(alphas)} alphas")


def _endpoint(alphas: Sequence[float], values: Sequence[float], at: float) -> float:
    if at not in alphas:
        raise LadleValueError(f"the sweep must include alpha = {at}")
    return values[list(alphas).index(at)]


def fixed_alpha(alpha: float = 0.5) -> float:
    """The W2 recommendation: α = 0.5 without domain knowledge.

    Example:
        >>> fixed_alpha()
        0.5
    """
    return alpha


def best_on_heldout(alphas: Sequence[float], heldout: Sequence[float]) -> float:
    """α with the highest held-out score (the smallest α among ties).

    Example:
        >>> best_on_heldout([0.0, 0.5, 1.0], [70.0, 75.0, 74.0])
        0.5
    """
    _check(alphas, heldout)
    best = max(heldout)
    return min(a for a, s in zip(alphas, heldout) if s == best)


def best_ood_without_id_loss(alphas: Sequence[float], id_scores: Sequence[float],
                             ood_scores: Sequence[float], epsilon: float = 0.0) -> float:
    """Rule (a)/(c): the largest OOD score among α whose ID score is at least the
    fine-tuned endpoint's (α = 1) minus ``epsilon`` (ε-tolerant rule, e.g. 0.1 or 1 pp).

    Example:
        >>> best_ood_without_id_loss([0, 0.5, 1], [70, 80, 79], [50, 55, 45])
        0.5
    """
    _check(alphas, id_scores, ood_scores)
    floor = _endpoint(alphas, id_scores, 1.0) - epsilon
    ok = [(o, -a, a) for a, i, o in zip(alphas, id_scores, ood_scores) if i >= floor]
    return max(ok)[2]


def best_id_without_ood_loss(alphas: Sequence[float], id_scores: Sequence[float],
                             ood_scores: Sequence[float]) -> float:
    """Rule (b): the largest ID score among α whose OOD score is at least the
    zero-shot endpoint's (α = 0).

    Example:
        >>> best_id_without_ood_loss([0, 0.5, 1], [70, 80, 82], [50, 55, 45])
        0.5
    """
    _check(alphas, id_scores, ood_scores)
    floor = _endpoint(alphas, ood_scores, 0.0)
    ok = [(i, -a, a) for a, i, o in zip(alphas, id_scores, ood_scores) if o >= floor]
    return max(ok)[2]
