"""matplotlib figures like the papers': shifted vs reference accuracy on logit-scaled
axes, with the zero-shot and fine-tuned endpoints, the WiSE-FT curve, the output-space
ensemble curve, per-epoch checkpoints, soups and the effective-robustness baseline;
plus the analyses' accuracy-vs-α connectivity panels and reliability diagrams.

Example:
    >>> plot_wiseft(curve, "wiseft.png", ensemble=ens)           # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .robustness import LinearFit, logit, sigmoid

_TICKS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94,
          0.95, 0.96, 0.97, 0.98, 0.99]


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | os.PathLike) -> Path:
    """Lay out, write and close ``fig``; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _setup(ax: Any, xs: list[float], ys: list[float]) -> None:
    lo_x, hi_x = logit(max(0.01, min(xs) - 0.03)), logit(min(0.995, max(xs) + 0.02))
    lo_y, hi_y = logit(max(0.01, min(ys) - 0.03)), logit(min(0.995, max(ys) + 0.02))
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(lo_y, hi_y)
    for axis, (lo, hi) in ((ax.xaxis, (lo_x, hi_x)), (ax.yaxis, (lo_y, hi_y))):
        ticks = [t for t in _TICKS if lo <= logit(t) <= hi]
        axis.set_ticks([logit(t) for t in ticks])
        axis.set_ticklabels([f"{100 * t:g}" for t in ticks])
    ax.grid(alpha=0.3)


def _baseline(ax: Any, fit: LinearFit | None, xs: list[float]) -> None:
    if fit is None:
        return
    grid = np.linspace(logit(max(0.01, min(xs) - 0.05)), logit(min(0.995, max(xs) + 0.03)), 50)
    ax.plot(grid, logit(fit(sigmoid(grid))), "--", color="gray", lw=1,
            label=f"linear fit, ID-trained models (n={fit.n})")


def plot_wiseft(curve: list[dict[str, Any]], path: str | os.PathLike, *,
                ensemble: list[dict[str, Any]] | None = None,
                epochs: list[dict[str, Any]] | None = None,
                shift_names: list[str] | None = None, fit: LinearFit | None = None,
                extra: dict[str, list[dict[str, Any]]] | None = None,
                title: str = "WiSE-FT") -> Path:
    """Avg-OOD (and per-shift) accuracy vs ID accuracy; one panel per shift + average.

    Args:
        curve: WiSE-FT points ``{"alpha", "acc": {"id", <shift>, "avg_ood"}}``.
        path: output PNG.
        ensemble: output-space ensemble points (same format).
        epochs: per-epoch fine-tuning checkpoints ``{"epoch", "acc"}``.
        shift_names: shifts to draw a panel for.
        fit: effective-robustness baseline (drawn on the average panel).
        extra: more labelled curves (e.g. WiSE-FT of a soup).
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    panels = ["avg_ood"] + list(shift_names or [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        series = {"WiSE-FT (weight space)": curve}
        if ensemble:
            series["output-space ensemble"] = ensemble
        series.update(extra or {})
        xs, ys = [], []
        for (label, pts), style in zip(series.items(), ["-o", ":s", "-^", "-v", "-d"]):
            x = [p["acc"]["id"] for p in pts]
            y = [p["acc"][key] for p in pts]
            xs += x
            ys += y
            ax.plot(logit(np.array(x)), logit(np.array(y)), style, ms=3, lw=1.2, label=label)
        zs, ft = curve[0], curve[-1]
        ax.plot(logit(zs["acc"]["id"]), logit(zs["acc"][key]), "*", ms=14, color="purple",
                label=f"zero-shot (α={zs['alpha']:g})")
        ax.plot(logit(ft["acc"]["id"]), logit(ft["acc"][key]), "*", ms=14, color="red",
                label=f"fine-tuned (α={ft['alpha']:g})")
        if epochs:
            ex = [e["acc"]["id"] for e in epochs]
            ey = [e["acc"][key] for e in epochs]
            xs += ex
            ys += ey
            ax.plot(logit(np.array(ex)), logit(np.array(ey)), "x", color="black", ms=5,
                    label="fine-tuning epochs")
        if key == "avg_ood":
            _baseline(ax, fit, xs)
        _setup(ax, xs, ys)
        ax.set_xlabel("ID accuracy (%), logit scale")
        ax.set_ylabel(("avg OOD" if key == "avg_ood" else key) + " accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="best", framealpha=0.6)
    fig.suptitle(title)
    return _save(plt, fig, path)


def plot_soups(points: dict[str, dict[str, float]], path: str | os.PathLike, *,
               individual: list[dict[str, float]] | None = None,
               curves: dict[str, list[dict[str, Any]]] | None = None,
               fit: LinearFit | None = None, title: str = "Model soups") -> Path:
    """Avg-OOD vs ID accuracy of individual fine-tuned models, soups and ensembles.

    Args:
        points: method → accuracies (``"id"``, ``"avg_ood"``).
        path: output PNG.
        individual: accuracies of every fine-tuned ingredient.
        curves: labelled WiSE-FT curves (e.g. toward θ0 from the greedy soup).
        fit: effective-robustness baseline.
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5))
    xs, ys = [], []
    if individual:
        x = [a["id"] for a in individual]
        y = [a["avg_ood"] for a in individual]
        xs += x
        ys += y
        ax.plot(logit(np.array(x)), logit(np.array(y)), "o", color="gray", alpha=0.7,
                label="fine-tuned models")
    for label, pts in (curves or {}).items():
        x = [p["acc"]["id"] for p in pts]
        y = [p["acc"]["avg_ood"] for p in pts]
        xs += x
        ys += y
        ax.plot(logit(np.array(x)), logit(np.array(y)), "-", lw=1, alpha=0.8, label=label)
    markers = {"zero-shot": ("*", "purple"), "best single": ("D", "red"),
               "uniform soup": ("s", "tab:blue"), "greedy soup": ("*", "tab:green"),
               "learned soup": ("P", "tab:olive"), "logit ensemble": ("^", "tab:orange"),
               "greedy ensemble": ("v", "tab:brown")}
    for label, acc in points.items():
        m, c = markers.get(label, ("o", None))
        xs.append(acc["id"])
        ys.append(acc["avg_ood"])
        ax.plot(logit(acc["id"]), logit(acc["avg_ood"]), m, color=c, ms=12 if m == "*" else 8,
                label=label)
    _baseline(ax, fit, xs)
    _setup(ax, xs, ys)
    ax.set_xlabel("ID accuracy (%), logit scale")
    ax.set_ylabel("avg OOD accuracy (%), logit scale")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_connectivity(connectivity: dict[str, Any], path: str | os.PathLike, *,
                      title: str = "Linear mode connectivity along WiSE-FT") -> Path:
    """Accuracy vs α per dataset with the endpoints' chord (WiSE-FT Def. 1: the curve
    must stay on or above it) and the better endpoint's level (Observation 2: points
    above it, marked, beat both endpoints).

    Args:
        connectivity: :func:`ladle.clip.analyses.connectivity`'s result.
        path: output PNG.
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    alphas = np.array(connectivity["alphas"])
    sets = connectivity["datasets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 3.4), squeeze=False)
    for ax, (name, rep) in zip(axes[0], sets.items()):
        acc = 100 * np.array(rep["accs"])
        a0, a1 = acc[alphas == 0.0][0], acc[alphas == 1.0][0]
        ax.plot(alphas, acc, "-o", ms=3, lw=1.2, label="θα (weight space)")
        ax.plot([0, 1], [a0, a1], "--", color="gray", lw=1, label="endpoints' chord")
        ax.axhline(max(a0, a1), ls=":", color="black", lw=0.8, label="better endpoint")
        beats = np.array([b and 0 < a < 1 for a, b in zip(alphas, rep["beats"])])
        below = ~np.array(rep["lmc"])
        if beats.any():
            ax.plot(alphas[beats], acc[beats], "*", ms=10, color="tab:green",
                    label="beats both endpoints")
        if below.any():
            ax.plot(alphas[below], acc[below], "x", ms=7, color="tab:red",
                    label="below the chord")
        ax.set_title(("avg OOD" if name == "avg_ood" else name)
                     + (" ✓ connected" if rep["connected"] else " ✗ not connected"), fontsize=9)
        ax.set_xlabel("α")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best", framealpha=0.6)
    fig.suptitle(title)
    return _save(plt, fig, path)


def plot_angle_advantage(angles: dict[str, Any], path: str | os.PathLike, *,
                         title: str = "Angle vs interpolation advantage") -> Path:
    """Every pair of fine-tuned ingredients: the angle φ between θi − θ0 and θj − θ0
    against the held-out interpolation advantage of their midpoint (Model soups Fig. 3).

    Args:
        angles: :func:`ladle.clip.analyses.ingredient_angles`' result with the
            ``advantage`` matrix of :func:`ladle.clip.analyses.ingredient_advantages`.
        path: output PNG.
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    k = len(angles["labels"])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    phi = [angles["phi"][i, j] for i, j in pairs]
    adv = [100 * angles["advantage"][i, j] for i, j in pairs]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.scatter(phi, adv, s=22)
    for (i, j), x, y in zip(pairs, phi, adv):
        ax.annotate(f"{i}-{j}", (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("angle φ between θi − θ0 and θj − θ0 (degrees)")
    ax.set_ylabel("interpolation advantage (pp, held-out)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_soup_gap(gap: dict[str, Any], path: str | os.PathLike, *,
                  title: str = "Soup vs ensemble: measured gap and estimate") -> Path:
    """Per α, the measured held-out loss gap L_soup − L_ens next to its analytic estimate
    and the estimate's two terms (Model soups §4, App K).

    Args:
        gap: ``{"pair": [a, b], "rows": soup_ensemble_gap rows}``.
        path: output PNG.
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    rows = gap["rows"]
    x = np.arange(len(rows))
    c = np.array([r["alpha"] * (1 - r["alpha"]) / 2 for r in rows])
    bars = {"measured gap": [r["gap"] for r in rows],
            "estimate": [r["estimate"] for r in rows],
            "c·(−L″) (curvature term)": c * -np.array([r["curvature"] for r in rows]),
            "c·β²·Var (variance term)": c * np.array([r["variance"] for r in rows])}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    width = 0.8 / len(bars)
    for k, (label, values) in enumerate(bars.items()):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, values, width, label=label)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(x, [f"α = {r['alpha']:g}" for r in rows])
    ax.set_ylabel("held-out cross-entropy difference")
    ax.set_title(f"{title}\n{gap['pair'][0]} → {gap['pair'][1]}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


def plot_reliability(models: dict[str, dict[str, Any]], sets: dict[str, Any],
                     path: str | os.PathLike, *, temperatures: dict[str, float] | None = None,
                     n_bins: int = 15, title: str = "Calibration (equal-mass bins)") -> Path:
    """Reliability diagram per set: accuracy vs confidence of every model's bins, with
    each model's ECE (and, given its temperature, the ECE after scaling) in the legend.

    Args:
        models: label -> logits per set name.
        sets: the evaluation sets (labels) to draw a panel for.
        path: output PNG.
        temperatures: label -> T fitted on held-out data.
        n_bins: equal-mass bins.
        title: figure title.

    Returns:
        The PNG path.
    """
    from ..analysis.calibration import expected_calibration_error, reliability_bins

    plt = _pyplot()
    temps = temperatures or {}
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.2), squeeze=False)
    for ax, (name, ds) in zip(axes[0], sets.items()):
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        lo = 0.5
        for label, logits in models.items():
            f = np.asarray(logits[name], dtype=np.float64)
            b = reliability_bins(f, ds.labels, n_bins=n_bins, from_logits=True)
            ece = expected_calibration_error(f, ds.labels, n_bins=n_bins, from_logits=True)
            text = f"{label}: ECE {100 * ece:.1f}"
            if label in temps:
                scaled = expected_calibration_error(f / temps[label], ds.labels, n_bins=n_bins,
                                                    from_logits=True)
                text += f" → {100 * scaled:.1f} (T={temps[label]:.2f})"
            ax.plot(b["confidence"], b["accuracy"], "-o", ms=3, lw=1.2, label=text)
            lo = min(lo, b["confidence"].min(), b["accuracy"].min())
        ax.set_xlim(lo - 0.02, 1.01)
        ax.set_ylim(lo - 0.02, 1.01)
        ax.set_title(name)
        ax.set_xlabel("confidence (bin mean)")
        ax.set_ylabel("accuracy (bin)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best", framealpha=0.6)
    fig.suptitle(title + " — ECE in %, before → after temperature scaling")
    return _save(plt, fig, path)
