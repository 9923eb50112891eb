"""Weight-space geometry streamed through the engine (Model soups §3.2, J.1):
Gram matrices of checkpoints from the C++ fp64 dot-product reduction
(dot jobs of a ``_core.Plan``; no state dict is built, inputs stay memory-mapped), the
angle φ between θ1 − θ0 and θ2 − θ0 over weight matrices excluding gain
parameters, and the interpolation advantage of a pair.

Delta products come from the Gram matrix per tensor, in fp64:
⟨θi − θ0, θj − θ0⟩ = G_ij − G_i0 − G_0j + G_00. fp32 products are exact in fp64,
so the cancellation costs about log10(‖θ‖²/‖δ‖²) of fp64's 16 digits, which leaves
ample precision for fine-tuned deltas.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from ..engine._units import engine_options
from ..errors import LadleValueError, MismatchError
from ..formats.patterns import as_patterns
from ..formats.sources import TensorSet, open_input

#: Name patterns (fnmatch, case-insensitive) of gain-like parameters that the paper
#: leaves out of φ: biases and normalisation scales/shifts.
GAIN_PATTERNS = ("*bias*", "*norm*", "*ln_*", "*.ln*", "*bn*", "*gamma*", "*beta*",
                 "*gain*", "*layer_scale*", "*ls1*", "*ls2*")


@dataclass
class Gram:
    """Per-tensor Gram matrices of k checkpoints (fp64, k × k per tensor)."""

    labels: list[str]
    per_tensor: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]

    def total(self, names: Sequence[str] | None = None) -> np.ndarray:
        """Sum over ``names`` (default: every tensor)."""
        names = list(self.per_tensor) if names is None else list(names)
        k = len(self.labels)
        return sum((self.per_tensor[n] for n in names), np.zeros((k, k)))

    def select(self, *, exclude_gains: bool = True, min_ndim: int = 2,
               include: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None) -> list[str]:
        """Tensor names kept for φ.

        Args:
            exclude_gains: drop names matching :data:`GAIN_PATTERNS`.
            min_ndim: keep tensors with at least this many dimensions (2: weight
                matrices; 0: everything).
            include: if given, keep only names matching one of these globs.
            exclude: further globs to drop.
        """
        include = as_patterns(include, "include")
        drop = (as_patterns(exclude, "exclude") or []) + (list(GAIN_PATTERNS) if exclude_gains
                                                          else [])
        out = []
        for name, shape in self.shapes.items():
            low = name.lower()
            if len(shape) < min_ndim:
                continue
            if include and not any(fnmatch.fnmatchcase(low, p.lower()) for p in include):
                continue
            if any(fnmatch.fnmatchcase(low, p.lower()) for p in drop):
                continue
            out.append(name)
        return out

    def deltas(self, names: Sequence[str] | None = None) -> np.ndarray:
        """(k−1) × (k−1) matrix ⟨θi − θ0, θj − θ0⟩, i, j ≥ 1, summed over ``names``."""
        names = list(self.per_tensor) if names is None else list(names)
        k = len(self.labels)
        out = np.zeros((k - 1, k - 1))
        for n in names:
            g = self.per_tensor[n]
            out += g[1:, 1:] - g[1:, :1] - g[:1, 1:] + g[0, 0]
        return out


def streamed_gram(checkpoints: Sequence[Any], *, names: Sequence[str] | None = None,
                  threads: int = 0, memory_budget: int | str = "256MiB") -> Gram:
    """Per-tensor Gram matrices ⟨θi, θj⟩ of k checkpoints, streamed in fp64.

    Args:
        checkpoints: paths, Checkpoints, modules or dicts of tensors (read in place).
        names: restrict to these tensor names (default: every float tensor present
            in all inputs).
        threads, memory_budget: engine options.

    Returns:
        A :class:`Gram`. Each element is read k times (once per row of the matrix);
        memory stays O(threads × chunk).

    Example:
        >>> g = streamed_gram(["zs.safetensors", "ft1.safetensors"])  # doctest: +SKIP
        >>> g.total()                                                   # doctest: +SKIP
    """
    sets: list[TensorSet] = [open_input(c) for c in checkpoints]
    if len(sets) < 2:
        raise LadleValueError("need at least two checkpoints")
    first = sets[0]
    if names is None:
        names = [n for n, r in first.tensors.items()
                 if r.is_float and r.n_elems > 0
                 and all(n in s.tensors and s.tensors[n].is_float for s in sets[1:])]
    plan = _core.Plan()
    registry: dict = {}
    for s in sets:
        s.register(plan, registry)
    shapes = {}
    for name in names:
        refs = []
        for s in sets:
            r = s.tensors.get(name)
            if r is None:
                raise MismatchError(f"{s.label}: tensor '{name}' is missing")
            if tuple(r.shape) != tuple(first.tensors[name].shape):
                raise MismatchError(f"{s.label}: tensor '{name}' has shape {list(r.shape)}, "
                                    f"{first.label} has {list(first.tensors[name].shape)}")
            refs.append(_core.Input(registry[r.source], r.offset, r.dtype))
        shapes[name] = tuple(first.tensors[name].shape)
        n_elems = first.tensors[name].n_elems
        for i in range(len(sets)):
            plan.add_dot(name, n_elems, refs[i], refs[i:])
    threads, budget, _ = engine_options(threads, memory_budget)
    out = _core.run(plan, kinds=[_core.JobKind.dot], threads=threads,
                    memory_budget=budget).get("dots", [])
    k = len(sets)
    per_tensor: dict[str, np.ndarray] = {}
    it = iter(out)
    for name in names:
        g = np.zeros((k, k))
        for i in range(k):
            row = next(it)
            g[i, i:] = row
            g[i:, i] = row
        per_tensor[name] = g
    return Gram([s.label for s in sets], per_tensor, shapes)


def angle_from_deltas(d: np.ndarray) -> float:
    """φ in degrees from the 2 × 2 delta Gram matrix."""
    den = math.sqrt(d[0, 0] * d[1, 1])
    if den == 0.0:
        raise LadleValueError("a fine-tuned model equals θ0 on the selected tensors; "
                              "the angle is undefined")
    return math.degrees(math.acos(max(-1.0, min(1.0, d[0, 1] / den))))


def angle(theta0: Any, theta1: Any, theta2: Any, *, exclude_gains: bool = True,
          min_ndim: int = 2, include: Sequence[str] | None = None,
          exclude: Sequence[str] | None = None, threads: int = 0,
          memory_budget: int | str = "256MiB") -> dict[str, Any]:
    """Angle φ between θ1 − θ0 and θ2 − θ0 (θ0 as origin), streamed.

    Args:
        theta0, theta1, theta2: checkpoints, modules or dicts of tensors.
        exclude_gains, min_ndim, include, exclude: tensor selection
            (see :meth:`Gram.select`; default: weight matrices without gains).
        threads, memory_budget: engine options.

    Returns:
        ``phi_degrees``, ``cos``, ``norm1``, ``norm2`` (‖θi − θ0‖), ``dot``, the
        ``tensors`` used and ``n_elems``.

    Example:
        >>> angle("zs/", "ft_lr1e-5/", "ft_lr3e-5/")["phi_degrees"]  # doctest: +SKIP
    """
    gram = streamed_gram([theta0, theta1, theta2], threads=threads, memory_budget=memory_budget)
    names = gram.select(exclude_gains=exclude_gains, min_ndim=min_ndim, include=include,
                        exclude=exclude)
    if not names:
        raise LadleValueError("no tensors left after excluding gains; relax the selection")
    d = gram.deltas(names)
    phi = angle_from_deltas(d)
    return {"phi_degrees": phi, "cos": math.cos(math.radians(phi)),
            "norm1": math.sqrt(d[0, 0]), "norm2": math.sqrt(d[1, 1]), "dot": float(d[0, 1]),
            "tensors": names,
            "n_elems": int(sum(int(np.prod(gram.shapes[n])) for n in names))}


def interpolation_advantage(module: Any, theta1: Any, theta2: Any,
                            evaluate: Callable[[Any], float], *, key_map: Any = None,
                            strict: bool = True, threads: int = 0) -> dict[str, float]:
    """Acc(½θ1 + ½θ2) − ½(Acc(θ1) + Acc(θ2)), each model streamed into ``module``.

    Args:
        module: live model to load into (overwritten).
        theta1, theta2: the two fine-tuned checkpoints.
        evaluate: ``evaluate(module) -> float`` (higher is better).

    Returns:
        ``advantage``, ``acc1``, ``acc2``, ``acc_mid``.
    """
    r = pairwise_interpolation_advantage(module, [theta1, theta2], evaluate, key_map=key_map,
                                         strict=strict, threads=threads)
    return {"advantage": float(r["advantage"][0, 1]), "acc1": float(r["accs"][0]),
            "acc2": float(r["accs"][1]), "acc_mid": float(r["acc_mid"][0, 1])}


def pairwise_interpolation_advantage(module: Any, thetas: Sequence[Any],
                                     evaluate: Callable[[Any], float], *, key_map: Any = None,
                                     strict: bool = True, threads: int = 0) -> dict[str, Any]:
    """The interpolation advantage of every pair of ``thetas`` (Model soups Fig. 3):
    k evaluations of the endpoints and k(k−1)/2 of the midpoints, each model streamed
    into ``module`` by one Loader over all k checkpoints.

    Args:
        module: live model to load into (overwritten).
        thetas: the k checkpoints.
        evaluate: ``evaluate(module) -> float`` (higher is better).

    Returns:
        ``accs`` (k), ``acc_mid`` and ``advantage`` (k × k, symmetric, 0 on the
        diagonal): ``advantage[i, j] = acc_mid[i, j] − ½(accs[i] + accs[j])``.

    Example:
        >>> r = pairwise_interpolation_advantage(model, paths, heldout_acc)  # doctest: +SKIP
    """
    from ..engine.live import Loader
    from ..formats.sources import target_set

    k = len(thetas)
    if k < 2:
        raise LadleValueError("the interpolation advantage needs at least two checkpoints")
    loader = Loader(target_set(module), [open_input(t) for t in thetas], key_map=key_map,
                    strict=strict, threads=threads)

    def score(weights: list[float]) -> float:
        loader.run(weights)
        return float(evaluate(module))

    accs = np.array([score([float(i == j) for j in range(k)]) for i in range(k)])
    mid = np.zeros((k, k))
    advantage = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            mid[i, j] = mid[j, i] = score([0.5 if m in (i, j) else 0.0 for m in range(k)])
            advantage[i, j] = advantage[j, i] = mid[i, j] - 0.5 * (accs[i] + accs[j])
    return {"accs": accs, "acc_mid": mid, "advantage": advantage}
