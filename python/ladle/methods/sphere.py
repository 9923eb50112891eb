"""Multi-model spherical merges (mergekit's ``multislerp`` and ``karcher``) as
coefficients of a weighted sum.

Both methods only ever form linear combinations of their input vectors (the models,
or their deltas from a base): unit vectors, weighted means, tangent vectors and the
exponential map all stay in the span of the inputs. So every quantity the tensor
algorithms compute is a vector of N coefficients, and every norm or dot product
they need follows from the N×N Gram matrix ``G`` of the inputs, which one streamed
pass gives (fp64). The iterations (Karcher's ``max_iter``) then run on N×N numbers
in fp64, with no further pass over the tensor; the output is one more streamed
weighted sum ``Σ_k fp32(c_k)·v_k`` (plus the base for multislerp with a base).
Memory is the engine's chunks and an N×N matrix per tensor, whatever ``max_iter``.

docs/methods.md states the formulas and where they differ from mergekit's.

Example:
    >>> multislerp_coefficients([0.5, 0.5], [1.0, 0.0, 0.0, 1.0])  # orthonormal pair
    [0.7071067811865476, 0.7071067811865476]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LadleValueError

if TYPE_CHECKING:
    import numpy as np

SPHERE_METHODS = ("multislerp", "karcher")


def sphere_coefficients(tensor: Any, gram: Sequence[float]) -> list[float]:
    """Coefficients of a planned multislerp/karcher tensor (``tensor.params`` as
    :func:`ladle.methods.methods._plan_sphere` sets them) from its streamed Gram matrix."""
    params = tensor.params
    if tensor.op == "karcher":
        n = len(tensor.inputs)
        return karcher_coefficients(gram, n, params["max_iter"], params["tol"])
    return multislerp_coefficients(params["weights"], gram, params["eps"], tensor.name)


def _gram(gram: Sequence[float], n: int) -> np.ndarray:
    import numpy as np

    return np.asarray(gram, dtype=np.float64).reshape(n, n)


def _norm(c: np.ndarray, g: np.ndarray) -> float:
    """‖Σ_k c_k v_k‖ from the Gram matrix (rounding can make ``cᵀGc`` slightly
    negative for a zero vector: clamped at 0)."""
    return math.sqrt(max(float(c @ g @ c), 0.0))


def multislerp_coefficients(weights: Sequence[float], gram: Sequence[float],
                            eps: float = 1e-8, name: str = "") -> list[float]:
    """mergekit's multislerp of N vectors as ``c`` with ``out = Σ_k c_k v_k``.

    ``weights`` are already normalised when ``normalize_weights`` is set. With
    ``n_k = √G_kk`` and ``d_k = n_k + eps``: the weighted mean of the unit vectors
    ``μ = Σ w_k e_k / d_k``; if ``‖μ‖ < eps`` two vectors fall back to the lerp
    ``(w_1, w_2)`` and more are an error; else ``m = μ/‖μ‖``, ``dot_k = (Gm)_k / d_k``,
    tangent mean ``τ = μ − (Σ w_k dot_k)·m``, ``s = ‖τ‖ + eps``,
    ``c = (Σ w_k n_k)·(cos(s)·m + sin(s)/s·τ)`` (all fp64).

    Raises:
        LadleValueError: the weighted mean of the unit vectors is zero (N > 2).
    """
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    g = _gram(gram, len(w))
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    d = norms + eps
    mu = w / d
    mean_norm = _norm(mu, g)
    if mean_norm < eps:
        if len(w) == 2:
            return [float(x) for x in w]
        raise LadleValueError(
            f"multislerp: tensor '{name}': the weighted mean of the {len(w)} unit vectors is "
            f"zero (antipodal vectors whose weights balance out); use other weights")
    m = mu / mean_norm
    dots = (g @ m) / d
    tangent = mu - float(w @ dots) * m
    s = _norm(tangent, g) + eps
    scale = float(w @ norms)
    return [float(x) for x in scale * (math.cos(s) * m + (math.sin(s) / s) * tangent)]


def karcher_coefficients(gram: Sequence[float], n: int, max_iter: int = 10,
                         tol: float = 1e-5) -> list[float]:
    """mergekit's Karcher mean of ``n`` equally weighted vectors as ``c`` with
    ``out = Σ_k c_k v_k``.

    Vectors with ``n_k = √G_kk ≤ tol`` drop out (coefficient 0; all of them: the
    output is zero). On the unit vectors ``a_k`` (Gram ``Ĝ_ij = G_ij/(n_i n_j)``),
    with ``w_k = 1/#valid``: ``u = Σ w_k a_k / ‖·‖`` (``a_first`` when that norm is
    below ``tol``); then up to ``max_iter`` times ``dot_k = clamp(⟨u, a_k⟩, −1, 1)``,
    ``θ_k = acos dot_k``, ``T = Σ_{θ_k ≥ tol} w_k θ_k/sin θ_k (a_k − dot_k u)``, stop
    when ``‖T‖ < tol``, else ``u = cos‖T‖·u + sin‖T‖·T/‖T‖``, renormalised when its
    norm exceeds ``tol``. The scale is ``Σ_k n_k / n`` over all vectors.
    """
    import numpy as np

    g = _gram(gram, n)
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    valid = [k for k in range(n) if norms[k] > tol]
    if not valid:
        return [0.0] * n
    gv = g[np.ix_(valid, valid)] / np.outer(norms[valid], norms[valid])
    w = np.full(len(valid), 1.0 / len(valid))
    u = w.copy()
    norm_u = _norm(u, gv)
    if norm_u < tol:
        u = np.eye(len(valid))[0]
    else:
        u = u / norm_u
    for _ in range(max_iter):
        dots = np.clip(gv @ u, -1.0, 1.0)
        step = np.zeros(len(valid))
        for k in range(len(valid)):
            theta = math.acos(float(dots[k]))
            if theta < tol:
                continue
            step[k] += w[k] * theta / math.sin(theta)
            step -= w[k] * theta / math.sin(theta) * float(dots[k]) * u
        norm_step = _norm(step, gv)
        if norm_step < tol:
            break
        u = math.cos(norm_step) * u + math.sin(norm_step) * (step / norm_step)
        norm_u = _norm(u, gv)
        if norm_u > tol:
            u = u / norm_u
    scale = float(norms.sum()) / n
    out = [0.0] * n
    for k, coefficient in zip(valid, u):
        out[k] = scale * float(coefficient) / float(norms[k])
    return out
