"""Linear mode connectivity (WiSE-FT Def. 1) and "beats both endpoints"
(Observation 2) on accuracy curves over α, per dataset (SPEC §1.5, §4 row 27).

Example:
    >>> lmc_check([0, 0.5, 1], [70.0, 76.0, 80.0])
    [True, True, True]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..soups.selection import _check, _endpoint


def lmc_check(alphas: Sequence[float], accs: Sequence[float], *, tol: float = 0.0) -> list[bool]:
    """Per α: Acc(θ_α) ≥ (1 − α)·Acc(θ0) + α·Acc(θ1) − tol.

    Args:
        alphas: mixing coefficients; must include 0 and 1.
        accs: accuracy of θ_α at each α.
        tol: slack for evaluation noise (same units as ``accs``).

    Returns:
        One boolean per α (the endpoints are always True).
    """
    _check(alphas, accs)
    a0, a1 = _endpoint(alphas, accs, 0.0), _endpoint(alphas, accs, 1.0)
    return [acc >= (1.0 - a) * a0 + a * a1 - tol for a, acc in zip(alphas, accs)]


def beats_endpoints(alphas: Sequence[float], accs: Sequence[float], *,
                    strict: bool = False) -> list[bool]:
    """Per α: Acc(θ_α) ≥ max(Acc(θ0), Acc(θ1)) (``strict``: >)."""
    _check(alphas, accs)
    best = max(_endpoint(alphas, accs, 0.0), _endpoint(alphas, accs, 1.0))
    return [acc > best if strict else acc >= best for acc in accs]


def connectivity_report(alphas: Sequence[float], curves: Mapping[str, Sequence[float]], *,
                        tol: float = 0.0, strict: bool = False) -> dict[str, dict[str, Any]]:
    """Both checks for every dataset.

    Args:
        alphas: mixing coefficients (include 0 and 1).
        curves: dataset name -> accuracies at ``alphas``.

    Returns:
        dataset -> ``lmc`` (per α), ``connected`` (all α), ``beats`` (per α),
        ``beats_any`` (some interior α beats both endpoints) and
        ``beating_alphas``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, accs in curves.items():
        lmc = lmc_check(alphas, accs, tol=tol)
        beats = beats_endpoints(alphas, accs, strict=strict)
        interior = [a for a, b in zip(alphas, beats) if b and 0.0 < a < 1.0]
        out[name] = {"lmc": lmc, "connected": all(lmc), "beats": beats,
                     "beats_any": bool(interior), "beating_alphas": interior}
    return out
