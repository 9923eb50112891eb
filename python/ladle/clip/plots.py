"""matplotlib figures like the papers': shifted vs reference accuracy on logit-scaled
axes, with the zero-shot and fine-tuned endpoints, the WiSE-FT curve, the output-space
ensemble curve, per-epoch checkpoints, soups and the effective-robustness baseline.

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
