"""The 2-D slice of weight space through θ0, θ1, θ2 (Model soups §3.2, Fig. 2;
Garipov et al.'s Gram–Schmidt construction), without materialising the basis.

u1 = (θ1 − θ0)/‖θ1 − θ0‖ and u2 = the normalised part of θ2 − θ0 orthogonal to u1
are linear combinations of θ0, θ1, θ2, so their coefficients follow from the
streamed Gram matrix alone, and the grid point θ0 + a·u1 + b·u2 is the weighted sum
w0·θ0 + w1·θ1 + w2·θ2 with w0 + w1 + w2 = 1, which :class:`ladle.Loader` streams
straight into a live model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LadleValueError


@dataclass
class Plane:
    """Orthonormal basis of the plane through θ0, θ1, θ2, as coefficient vectors.

    Attributes:
        u1, u2: coefficients of u1, u2 over (θ0, θ1, θ2) (each sums to zero).
        coords: plane coordinates (a, b) of θ0, θ1, θ2.
    """

    u1: np.ndarray
    u2: np.ndarray
    coords: np.ndarray

    def weights(self, a: float, b: float) -> list[float]:
        """Weights (w0, w1, w2) of the point θ0 + a·u1 + b·u2."""
        w = np.array([1.0, 0.0, 0.0]) + a * self.u1 + b * self.u2
        return [float(x) for x in w]


def plane_basis(deltas: np.ndarray) -> Plane:
    """Gram–Schmidt in the span of d1 = θ1 − θ0, d2 = θ2 − θ0 from their 2 × 2
    Gram matrix ``deltas`` (see :meth:`ladle.analysis.geometry.Gram.deltas`).

    Example:
        >>> p = plane_basis(np.array([[4.0, 0.0], [0.0, 9.0]]))
        >>> p.coords.tolist()
        [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]
    """
    d11, d12, d22 = float(deltas[0, 0]), float(deltas[0, 1]), float(deltas[1, 1])
    if d11 <= 0.0:
        raise LadleValueError("θ1 equals θ0: the plane is undefined")
    n1 = math.sqrt(d11)
    proj = d12 / n1                  # ⟨d2, u1⟩
    rest = d22 - proj * proj         # ‖d2 − proj·u1‖²
    if rest <= 1e-12 * d22:
        raise LadleValueError("θ0, θ1, θ2 are collinear: the plane is undefined")
    n2 = math.sqrt(rest)
    u1 = np.array([-1.0, 1.0, 0.0]) / n1
    u2 = (np.array([-1.0, 0.0, 1.0]) - proj * u1) / n2
    coords = np.array([[0.0, 0.0], [n1, 0.0], [proj, n2]])
    return Plane(u1, u2, coords)


@dataclass
class PlaneGrid:
    """Scores of every grid point of a plane."""

    plane: Plane
    a: np.ndarray
    b: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (len b, len a)


def plane_grid(plane: Plane, n: int = 11, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes covering the three points with a ``margin`` (fraction of the span)."""
    lo, hi = plane.coords.min(axis=0), plane.coords.max(axis=0)
    pad = margin * (hi - lo)
    return (np.linspace(lo[0] - pad[0], hi[0] + pad[0], n),
            np.linspace(lo[1] - pad[1], hi[1] + pad[1], n))


def evaluate_plane(module: Any, theta0: Any, theta1: Any, theta2: Any,
                   evaluate: Callable[[Any], float | dict[str, float]], *, n: int = 11,
                   margin: float = 0.2, a: Sequence[float] | None = None,
                   b: Sequence[float] | None = None, key_map: Any = None, strict: bool = True,
                   threads: int = 0) -> PlaneGrid:
    """Evaluate ``module`` at every point θ0 + a·u1 + b·u2 of a grid.

    The basis comes from the streamed Gram matrix over every float tensor (the
    tensors the loader writes); each grid point is streamed into ``module``.

    Args:
        module: live model (overwritten; reload what you need afterwards).
        theta0, theta1, theta2: checkpoints, modules or dicts of tensors.
        evaluate: ``evaluate(module)`` returning a float or a dict of metrics
            (e.g. ``{"train_loss": ..., "test_error": ...}``).
        n, margin: default grid (see :func:`plane_grid`); or give ``a`` and ``b``.

    Returns:
        A :class:`PlaneGrid`.
    """
    from ..engine.live import Loader
    from ..formats.sources import open_input, target_set

    sets = [open_input(x) for x in (theta0, theta1, theta2)]
    loader = Loader(target_set(module), sets, key_map=key_map, strict=strict, threads=threads)
    plane = plane_basis(loader_deltas(loader))
    ga, gb = plane_grid(plane, n, margin)
    ga = np.asarray(a, float) if a is not None else ga
    gb = np.asarray(b, float) if b is not None else gb
    grid = PlaneGrid(plane, ga, gb)
    for j, bj in enumerate(gb):
        for i, ai in enumerate(ga):
            loader.run(plane.weights(ai, bj))
            out = evaluate(module)
            metrics = out if isinstance(out, dict) else {"score": out}
            for k, v in metrics.items():
                grid.values.setdefault(k, np.full((len(gb), len(ga)), np.nan))[j, i] = float(v)
    return grid


def loader_deltas(loader: Any) -> np.ndarray:
    """2 × 2 Gram matrix of θ1 − θ0, θ2 − θ0 over a 3-input loader's float tensors,
    streamed with the loader's own plan and sources."""
    from .. import _core

    groups = [g for g in loader.float_groups if g.ref.n_elems > 0]
    for g in groups:
        refs = [_core.Input(loader.registry[r.source], r.offset, r.dtype) for r in g.inputs]
        for i in range(3):
            loader.plan.add_dot(g.name, g.ref.n_elems, refs[i], refs[i:])
    dot = [_core.JobKind.dot]
    try:
        out = _core.run(loader.plan, kinds=dot, threads=loader.threads,
                        memory_budget=loader.memory_budget).get("dots", [])
    finally:
        loader.plan.clear_jobs(dot)
    total = np.zeros((2, 2))
    for t in range(len(groups)):
        g = np.zeros((3, 3))
        for i in range(3):
            g[i, i:] = out[3 * t + i]
            g[i:, i] = out[3 * t + i]
        total += g[1:, 1:] - g[1:, :1] - g[:1, 1:] + g[0, 0]
    return total


def plot_plane(grid: PlaneGrid, path: str | Path, metric: str | None = None, *,
               labels: Sequence[str] = ("θ0", "θ1", "θ2"), title: str | None = None) -> Path:
    """Contour plot of one metric over the plane, with θ0, θ1, θ2 marked (Fig. 2).

    Args:
        grid: from :func:`evaluate_plane`.
        path: image file to write (png, pdf, svg).
        metric: which metric (default: the first).
        labels: names of the three points.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or next(iter(grid.values))
    z = grid.values[metric]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    cs = ax.contourf(grid.a, grid.b, z, levels=20, cmap="viridis")
    ax.contour(grid.a, grid.b, z, levels=10, colors="k", linewidths=0.4, alpha=0.5)
    fig.colorbar(cs, ax=ax, label=metric)
    for (x, y), name in zip(grid.plane.coords, labels):
        ax.plot(x, y, "o", color="white", markeredgecolor="black")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), color="white")
    ax.set_xlabel("u1 (along θ1 − θ0)")
    ax.set_ylabel("u2")
    ax.set_aspect("equal")
    ax.set_title(title or f"{metric} on the plane through θ0, θ1, θ2")
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
