"""Model soups §4 / App K: the analytic estimate of the soup-vs-ensemble loss gap
next to the measured one (SPEC §1.6).

    L^soup_α − L^ens_α ≈ c_α · ( −d²/dα² L^soup_α + β² · E_x Var_{Y∼softmax(β f(x; θ_α))}[Δf_Y(x)] )

with c_α = α(1 − α)/2, Δf = f(x; θ1) − f(x; θ0), and β calibrated per α as
argmin_β E ℓ(β f^soup_α(x), y). The curvature is a central finite difference in α
of L^soup (β held fixed), which evaluates θ_{α±h}; for α within h of 0 or 1 the
stencil is shifted inside [0, 1]. The sign of the curvature term is the one the
derivation implies (SPEC §6 item 5), not the extracted "+".

The model is generic: ``predict(alpha) -> logits`` (N × C) of f(x; θ_α) on a fixed
data set, plus the labels; :func:`module_predict` builds it for a live model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import LadleValueError
from ._np import as_logits, as_predictions, cross_entropy, fit_scale, softmax

Predict = Callable[[float], Any]


def softmax_variance(logits: np.ndarray, delta: np.ndarray, beta: float) -> float:
    """E_x Var_{Y∼softmax(β f(x))}[Δf_Y(x)]."""
    p = softmax(beta * logits)
    mean = (p * delta).sum(axis=1)
    return float(np.maximum((p * delta ** 2).sum(axis=1) - mean ** 2, 0.0).mean())


def soup_ensemble_gap(predict: Predict, labels: Any, alphas: Sequence[float] = (0.25, 0.5, 0.75),
                      *, h: float = 0.05, calibrate: bool = True) -> list[dict[str, float]]:
    """Measured gap L^soup_α − L^ens_α and its analytic estimate, per α.

    Args:
        predict: ``predict(alpha)`` -> logits of the soup θ_α = (1 − α)θ0 + αθ1.
        labels: true classes (N,).
        alphas: where to evaluate (each in [0, 1]).
        h: finite-difference step in α for the curvature.
        calibrate: fit β per α (the paper); False keeps β = 1.

    Returns:
        One dict per α: ``alpha``, ``beta``, ``loss_soup``, ``loss_ens``, ``gap``
        (measured), ``curvature`` (d²L^soup/dα²), ``variance`` (β²·E Var),
        ``estimate`` (c_α·(−curvature + variance)), ``err_soup``, ``err_ens``.
    """
    y = as_predictions(labels, "labels")
    if not 0.0 < h < 0.5:
        raise LadleValueError(f"h must lie in (0, 0.5), got {h}")
    cache: dict[float, np.ndarray] = {}

    def logits(a: float) -> np.ndarray:
        a = round(float(a), 12)
        if a not in cache:
            cache[a] = as_logits(predict(a), f"predict({a})")
        return cache[a]

    f0, f1 = logits(0.0), logits(1.0)
    delta = f1 - f0
    rows = []
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise LadleValueError(f"alpha must lie in [0, 1], got {alpha}")
        soup = logits(alpha)
        ens = (1.0 - alpha) * f0 + alpha * f1
        beta = fit_scale(soup, y) if calibrate else 1.0
        centre = min(max(alpha, h), 1.0 - h)
        lm, lc, lp = (cross_entropy(beta * logits(centre + s), y) for s in (-h, 0.0, h))
        curvature = (lp - 2.0 * lc + lm) / h ** 2
        variance = beta ** 2 * softmax_variance(soup, delta, beta)
        c = alpha * (1.0 - alpha) / 2.0
        loss_soup, loss_ens = cross_entropy(beta * soup, y), cross_entropy(beta * ens, y)
        rows.append({"alpha": float(alpha), "beta": beta, "loss_soup": loss_soup,
                     "loss_ens": loss_ens, "gap": loss_soup - loss_ens,
                     "curvature": curvature, "variance": variance,
                     "estimate": c * (-curvature + variance),
                     "err_soup": float((soup.argmax(1) != y).mean()),
                     "err_ens": float((ens.argmax(1) != y).mean())})
    return rows


def module_predict(module: Any, theta0: Any, theta1: Any, forward: Callable[[Any], Any], *,
                   key_map: Any = None, strict: bool = True, threads: int = 0) -> Predict:
    """``predict(alpha)`` for a live model: streams θ_α into ``module`` and returns
    ``forward(module)`` (logits on the fixed data) as numpy.

    Example:
        >>> predict = module_predict(model, "zs/", "ft/", lambda m: m(x))  # doctest: +SKIP
        >>> soup_ensemble_gap(predict, y)                                  # doctest: +SKIP
    """
    from ..engine.live import Loader
    from ..formats.sources import open_input, target_set

    loader = Loader(target_set(module), [open_input(theta0), open_input(theta1)],
                    key_map=key_map, strict=strict, threads=threads)

    def predict(alpha: float) -> np.ndarray:
        loader.run([1.0 - alpha, alpha])
        out = forward(module)
        if hasattr(out, "detach"):
            out = out.detach().cpu().double().numpy()
        return np.asarray(out, np.float64)

    return predict
