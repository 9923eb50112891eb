"""Prediction-space diversity measures of WiSE-FT App C (SPEC §1.5), on predictions
or logits held in memory as numpy arrays (examples × classes).

Example:
    >>> import numpy as np
    >>> prediction_diversity([0, 1, 2, 0], [0, 2, 2, 1], labels=[0, 1, 2, 1])
    0.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import LadleValueError
from ._np import as_array, as_logits, as_predictions, log_softmax, same_length


def prediction_diversity(f: Any, g: Any, labels: Any) -> float:
    """PD: fraction of examples where exactly one of the two classifiers is correct.

    Args:
        f, g: class predictions (N,) or logits (N, C) of the two models.
        labels: true classes (N,).

    Returns:
        PD in [0, 1].
    """
    pf, pg, y = as_predictions(f, "f"), as_predictions(g, "g"), as_predictions(labels, "labels")
    same_length(f=pf, g=pg, labels=y)
    return float(((pf == y) != (pg == y)).mean())


def cohen_kappa_complement(f: Any, g: Any, n_classes: int | None = None) -> float:
    """CC = (1 − p_o)/(1 − p_e): p_o = fraction of identical predictions,
    p_e = (1/N²)·Σ_c n_{f,c}·n_{g,c}.

    Args:
        f, g: class predictions (N,) or logits (N, C).
        n_classes: number of classes (default: inferred).

    Returns:
        CC (0 when the predictions are identical; 1 − κ in general). When both
        models predict one and the same class everywhere (p_e = 1) it is 0.

    Example:
        >>> cohen_kappa_complement([0, 0, 1, 1], [0, 1, 1, 0])
        1.0
    """
    pf, pg = as_predictions(f, "f"), as_predictions(g, "g")
    n = same_length(f=pf, g=pg)
    c = int(n_classes or max(pf.max(), pg.max()) + 1)
    p_o = float((pf == pg).mean())
    p_e = float(np.dot(np.bincount(pf, minlength=c), np.bincount(pg, minlength=c))) / n ** 2
    if p_e >= 1.0:
        return 0.0 if p_o == 1.0 else float("inf")
    return (1.0 - p_o) / (1.0 - p_e)


def mean_kl(f: Any, g: Any) -> float:
    """Mean over examples of KL(softmax f(x) ‖ softmax g(x)), in nats, from logits."""
    lf, lg = log_softmax(as_logits(f, "f")), log_softmax(as_logits(g, "g"))
    if lf.shape != lg.shape:
        raise LadleValueError(f"logit shapes differ: {lf.shape} vs {lg.shape}")
    return float((np.exp(lf) * (lf - lg)).sum(axis=1).mean())


def _subsample(n: int, max_samples: int | None, seed: int) -> np.ndarray | slice:
    if max_samples is None or n <= max_samples:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def linear_cka(x: Any, y: Any, *, max_samples: int | None = 10_000, seed: int = 0) -> float:
    """Linear CKA = ‖S_yᵀ S_x‖_F² / (‖S_xᵀ S_x‖_F · ‖S_yᵀ S_y‖_F) on column-centred
    feature matrices (Kornblith et al. 2019).

    The SPEC's extracted equation prints the denominator norms squared; with squared
    norms CKA(X, X) = 1/‖XᵀX‖_F² would depend on the scale of X, so ladle uses the
    standard unsquared norms (CKA(X, X) = 1, invariant to isotropic scaling and
    orthogonal transforms). This is SPEC §6 item 6, resolved.

    Args:
        x, y: features (N, d_x) and (N, d_y) of the same examples (logits work too).
        max_samples: subsample this many examples when N is larger (the paper: 10,000);
            None uses all.
        seed: subsample seed (the same rows are taken from x and y).

    Returns:
        CKA in [0, 1].
    """
    a, b = as_logits(x, "x"), as_logits(y, "y")
    same_length(x=a, y=b)
    rows = _subsample(len(a), max_samples, seed)
    a, b = a[rows], b[rows]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = np.linalg.norm(b.T @ a) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if den == 0.0:
        raise LadleValueError("a feature matrix is constant after centring; CKA is undefined")
    return float(num / den)


def cka_complement(x: Any, y: Any, **kwargs: Any) -> float:
    """CKAC = 1 − linear CKA (options as :func:`linear_cka`)."""
    return 1.0 - linear_cka(x, y, **kwargs)


def override_analysis(logits_zs: Any, logits_ft: Any, ensemble: Any | None = None, *,
                      alpha: float = 0.5, labels: Any | None = None) -> dict[str, float]:
    """Who wins where the zero-shot and fine-tuned models disagree (WiSE-FT §5.1).

    The zero-shot model *overrides* when ŷ_zs ≠ ŷ_ft and the ensemble predicts ŷ_zs;
    it *is overridden* when the ensemble predicts ŷ_ft.

    Args:
        logits_zs, logits_ft: logits (N, C) of θ0 and θ1.
        ensemble: logits or predictions of the mixed model (e.g. WiSE-FT at α);
            default: the output-space mix (1 − α)·f_zs + α·f_ft.
        alpha: mixing coefficient of the default ensemble (the paper: 0.5).
        labels: optional true classes, to report accuracy on the disagreements.

    Returns:
        ``n_disagree``, ``disagree_rate``, ``override_rate`` and ``overridden_rate``
        (fractions of the disagreements; the rest predicts a third class) and, with
        labels, ``acc_zs``, ``acc_ft``, ``acc_ensemble`` on the disagreements.
    """
    fz, ff = as_logits(logits_zs, "logits_zs"), as_logits(logits_ft, "logits_ft")
    if ensemble is None:
        ensemble = (1.0 - alpha) * fz + alpha * ff
    pz, pf, pe = fz.argmax(1), ff.argmax(1), as_predictions(ensemble, "ensemble")
    n = same_length(logits_zs=pz, logits_ft=pf, ensemble=pe)
    dis = pz != pf
    k = int(dis.sum())
    out = {"n_disagree": float(k), "disagree_rate": k / n,
           "override_rate": float((pe[dis] == pz[dis]).mean()) if k else 0.0,
           "overridden_rate": float((pe[dis] == pf[dis]).mean()) if k else 0.0}
    if labels is not None:
        y = as_predictions(labels, "labels")[dis]
        for name, p in (("acc_zs", pz), ("acc_ft", pf), ("acc_ensemble", pe)):
            out[name] = float((p[dis] == y).mean()) if k else float("nan")
    return out


def confidence_margin(logits: Any) -> float:
    """δ = mean over examples of (largest logit − second-largest logit).

    Logits, not probabilities: WiSE-FT mixes before the softmax. Compare
    ``confidence_margin(f_zs) − confidence_margin(f_ft)`` per dataset.
    """
    f = as_logits(logits)
    if f.shape[1] < 2:
        raise LadleValueError("the confidence margin needs at least two classes")
    top2 = np.partition(f, -2, axis=1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).mean())


def diversity_report(f: Any, g: Any, labels: Any, *, features: tuple[Any, Any] | None = None,
                     max_samples: int | None = 10_000) -> dict[str, float]:
    """PD, CC, KL and CKAC of two models' logits (CKAC on ``features`` if given)."""
    lf, lg = as_logits(f, "f"), as_logits(g, "g")
    fx, gx = features if features is not None else (lf, lg)
    return {"pd": prediction_diversity(lf, lg, labels),
            "cc": cohen_kappa_complement(lf, lg, lf.shape[1]),
            "kl": mean_kl(lf, lg),
            "ckac": cka_complement(as_array(fx), as_array(gx), max_samples=max_samples)}
