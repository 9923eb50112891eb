"""Uniform and greedy model soups over a user ``evaluate(module) -> float``, streamed
through a live model: O(1) models in memory whatever the number of ingredients.

Greedy soup (Model soups, Recipe 1; SPEC §1.6): score every ingredient, rank best
first, keep an fp32 running sum S of the accepted ones and their count n; each step
streams one candidate once to form T = S + θ_i (fp32), loads the tentative soup
T · fp32(1/(n+1)) rounded to the model's dtype into the live model, and keeps it when
the held-out score improves (strictly by default). S is never undone: on acceptance
T becomes S. The soup written at the end is S · fp32(1/n), bit-identical to the
model scored at the last acceptance.

Example:
    >>> result = ladle.greedy_soup(model, ["ft1/", "ft2/", "ft3/"], evaluate,
    ...                            out="soup.safetensors")        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine._units import parse_size
from ..engine.live import Loader
from ..engine.output import checked_output
from ..engine.plan import check_int_policy, nonfloat_inputs
from ..engine.writer import WriteTensor, write_tensors
from ..errors import LadleValueError
from ..formats.keymap import KeyMap
from ..formats.sources import TensorSet, open_input, target_set
from ..scores import as_score
from .accumulator import Accumulators
from .results import ResultsLog, as_log

Evaluate = Callable[[Any], float]


def fp32_reciprocal(n: int) -> float:
    """fp32(1/n) as a Python float (exactly representable in fp32)."""
    return float(np.float32(1.0 / n))


@dataclass
class SoupResult:
    """What a soup chose and how it scored.

    Attributes:
        method: ``"uniform-soup"`` or ``"greedy-soup"``.
        ingredients: input labels, in the order given.
        counts: times each ingredient was accepted (0 or 1 without replacement).
        score: held-out score of the final soup (None when not evaluated).
        individual_scores: score of each ingredient alone (greedy, ranked order).
        history: one dict per tentative soup: candidate, score, accepted.
        out: where the soup was written, if anywhere.
        int_policy: how integer/bool buffers were combined (see :func:`ladle.merge`).
    """

    method: str
    ingredients: list[str]
    counts: list[int]
    score: float | None
    individual_scores: list[float | None] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Any = None
    int_policy: str = "first"

    @property
    def weights(self) -> list[float]:
        """Mixing weight of each ingredient (count / total)."""
        total = sum(self.counts)
        return [c / total for c in self.counts] if total else [0.0] * len(self.counts)

    @property
    def selected(self) -> list[int]:
        """Indices of the ingredients with a non-zero weight."""
        return [i for i, c in enumerate(self.counts) if c]


def accepts(score: float, best: float, strict: bool) -> bool:
    """The greedy rule: strictly better, or not worse when ``strict`` is False."""
    return score > best if strict else score >= best


def candidate_order(n: int, *, order: str = "score", scores: Sequence[float] | None = None,
                    seed: int = 0, with_replacement: bool = False,
                    n_steps: int | None = None) -> list[int]:
    """The sequence of candidates a greedy loop tries.

    Args:
        n: number of ingredients.
        order: ``"score"`` (best held-out score first; needs ``scores``), ``"given"``
            or ``"random"`` (shuffled with ``seed``).
        scores: individual scores (for ``"score"``).
        seed: seed of the random order / draws.
        with_replacement: candidates may be added again (non-uniform weights,
            Model soups App. I): ``"random"`` draws ``n_steps`` candidates uniformly,
            the other orders cycle through their ranking for ``n_steps`` steps.
        n_steps: steps with replacement (default ``2 * n``).

    Returns:
        Candidate indices in the order they are tried.

    Example:
        >>> candidate_order(3, scores=[0.1, 0.9, 0.5])
        [1, 2, 0]
    """
    rng = random.Random(seed)
    if order == "score":
        if scores is None:
            raise LadleValueError("order='score' needs the individual scores")
        base = sorted(range(n), key=lambda i: (-scores[i], i))
    elif order == "given":
        base = list(range(n))
    elif order == "random":
        base = list(range(n))
        rng.shuffle(base)
    else:
        raise LadleValueError(f"order must be score, given or random, not {order!r}")
    if not with_replacement:
        return base
    steps = n_steps if n_steps is not None else 2 * n
    if order == "random":
        return base[:1] + [rng.randrange(n) for _ in range(max(0, steps - 1))]
    return [base[i % n] for i in range(steps)]


def _same(name: str) -> str:
    return name


def _labels(sets: Sequence[TensorSet]) -> list[str]:
    return [s.label for s in sets]


def uniform_soup(module: Any, ingredients: Sequence[Any], evaluate: Evaluate | None = None, *,
                 out: str | os.PathLike | None = None, key_map: KeyMap = None,
                 strict: bool = True, log: ResultsLog | str | None = None, threads: int = 0,
                 memory_budget: int | str = "256MiB", overwrite: bool = False,
                 max_shard_size: int | str = "5GB", int_policy: str = "first") -> SoupResult:
    """Load the uniform soup ``(Σ_k θ_k) · fp32(1/N)`` into ``module`` (streamed).

    The same arithmetic as a greedy soup that accepts every ingredient in order.
    Non-float buffers follow ``int_policy`` (default: the first ingredient's).

    Args:
        module: the live model to overwrite.
        ingredients: checkpoints, modules or dicts (see :func:`ladle.load_into`).
        evaluate: optional held-out score of the soup.
        out: also write the soup (safetensors, recipe in the metadata).
        key_map, strict: name matching (see :func:`ladle.load_into`).
        log: JSONL results log (path or :class:`ResultsLog`).
        threads, memory_budget, overwrite, max_shard_size: engine/output options.
        int_policy: integer/bool buffers: ``"first"``, ``"max"`` or ``"error"`` (see
            :func:`ladle.merge`); recorded in the output's metadata.

    Returns:
        A :class:`SoupResult`.

    Example:
        >>> ladle.uniform_soup(model, ["a/", "b/"], evaluate).score   # doctest: +SKIP
    """
    if out is not None:
        checked_output(out, ingredients, overwrite=overwrite)  # before reading ingredients
    check_int_policy(int_policy)
    sets = [open_input(x) for x in ingredients]
    n = len(sets)
    loader = Loader(target_set(module), sets, key_map=key_map, strict=strict, threads=threads,
                    memory_budget=memory_budget)
    t0 = time.perf_counter()
    loader.run([1.0] * n, post_scale=fp32_reciprocal(n), int_policy=int_policy)
    score = (as_score(evaluate(module), f"evaluate(module) for the uniform soup of {n} "
                      f"ingredients") if evaluate is not None else None)
    result = SoupResult("uniform-soup", _labels(sets), [1] * n, score, int_policy=int_policy)
    as_log(log).append("uniform-soup", ingredients=result.ingredients, weights=result.weights,
                       score=score, seconds=time.perf_counter() - t0)
    if out is not None:
        result.out = _write_from_module(loader, out, result, overwrite, max_shard_size, threads)
    return result


def _recipe_metadata(result: SoupResult) -> dict[str, str]:
    return {"ladle_method": result.method, "ladle_int_policy": result.int_policy,
            "ladle_recipe": json.dumps({"ingredients": result.ingredients,
                                        "counts": result.counts, "weights": result.weights,
                                        "score": result.score})}


def _write_from_module(loader: Loader, out: Any, result: SoupResult, overwrite: bool,
                       max_shard_size: int | str, threads: int) -> Any:
    from ..engine.writer import copy_tensor

    outputs = [copy_tensor(g.name, g.ref) for g in loader.groups]
    return write_tensors(out, outputs, [loader.targets], metadata=_recipe_metadata(result),
                         max_shard_size=max_shard_size, overwrite=overwrite,
                         threads=threads)["out"]


def greedy_soup(module: Any, ingredients: Sequence[Any], evaluate: Evaluate, *,
                out: str | os.PathLike | None = None, strict: bool = True,
                order: str = "score", seed: int = 0, with_replacement: bool = False,
                n_steps: int | None = None, scores: Sequence[float] | None = None,
                key_map: KeyMap = None, strict_keys: bool = True,
                accumulator: str = "auto", accumulator_budget: int | str = "4GiB",
                workdir: str | os.PathLike | None = None,
                log: ResultsLog | str | None = None, progress: bool = False, threads: int = 0,
                memory_budget: int | str = "256MiB", overwrite: bool = False,
                max_shard_size: int | str = "5GB",
                distributed: bool | None = None, int_policy: str = "first") -> SoupResult:
    """Greedy soup (Model soups, Recipe 1) streamed through the live ``module``.

    Args:
        module: the live model; ``evaluate`` scores whatever it holds. On return it
            holds the final soup.
        ingredients: checkpoints, modules or dicts (see :func:`ladle.load_into`).
        evaluate: ``evaluate(module) -> float``, higher is better (held-out data).
        out: write the final soup here (safetensors, recipe in the metadata).
        strict: accept only strictly better soups (False: also ties).
        order: ``"score"`` (rank by individual score, the recipe), ``"given"``, ``"random"``.
        seed: for ``"random"`` and draws with replacement.
        with_replacement: allow an ingredient to be added again (see
            :func:`candidate_order`); ``n_steps`` bounds the loop.
        scores: individual scores already known (skips those evaluations).
        key_map, strict_keys: name matching (see :func:`ladle.load_into`).
        accumulator: where the fp32 sums live: ``"auto"``, ``"ram"``, ``"disk"``.
        accumulator_budget: RAM allowed for both fp32 sums in ``"auto"`` mode.
        workdir: directory for on-disk sums (default: a temporary directory).
        log: JSONL results log (every evaluation is appended).
        progress: show a tqdm bar over steps.
        threads, memory_budget, overwrite, max_shard_size: engine/output options.
        distributed: every ``torch.distributed`` rank holds a replica of the model and
            evaluates it on its own slice of the held-out data: ``evaluate`` then
            returns the local mean, or ``(mean, weight)`` with e.g. the local example
            count, and the score is the weighted mean over ranks, identical on every
            rank, so all take the same decisions. Rank 0 writes ``out`` and the log.
            ``None`` (default): on when launched with ``WORLD_SIZE`` > 1.
        int_policy: integer/bool buffers of every soup loaded or written, over its
            ingredients in the given order: ``"first"``, ``"max"`` or ``"error"``
            (see :func:`ladle.merge`); the written soup equals
            ``ladle.merge(ingredients, weights, int_policy=...)`` on them.

    Returns:
        A :class:`SoupResult`; ``history`` holds every tentative soup.

    Example:
        >>> r = ladle.greedy_soup(model, paths, evaluate, out="soup/")  # doctest: +SKIP
        >>> r.selected, r.score                                          # doctest: +SKIP
    """
    if out is not None:
        checked_output(out, ingredients, overwrite=overwrite)  # before reading ingredients
    check_int_policy(int_policy)
    sets = [open_input(x) for x in ingredients]
    n = len(sets)
    if n == 0:
        raise LadleValueError("greedy_soup needs at least one ingredient")
    if scores is not None:
        if len(scores) != n:
            raise LadleValueError(f"got {len(scores)} score(s) for {n} ingredient(s)")
        scores = [as_score(v, f"scores[{k}] (ingredient {k} {sets[k].label!r})")
                  for k, v in enumerate(scores)]
    from ..engine.distributed import soup_group

    group = soup_group(distributed)
    if group is not None:
        evaluate = group.mean_evaluate(evaluate)
        log = log if group.rank == 0 else None
    log = as_log(log)
    labels = _labels(sets)
    target = target_set(module)
    # One loader per ingredient into the model: checks keys once, copies non-floats.
    singles = [Loader(target, [s], key_map=key_map, strict=strict_keys, threads=threads,
                      memory_budget=memory_budget) for s in sets]
    # and one over all of them for the non-float buffers of each (tentative) soup.
    nonfloats = Loader(target, sets, key_map=key_map, strict=strict_keys, threads=threads,
                       memory_budget=memory_budget)
    floats = singles[0].float_groups
    acc = Accumulators([(g.name, g.ref.shape) for g in floats],
                       parse_size(accumulator_budget, "accumulator_budget"), accumulator, workdir)
    try:
        return _greedy(module, sets, labels, singles, nonfloats, acc, evaluate, log, out=out,
                       strict=strict, order=order, seed=seed,
                       with_replacement=with_replacement, n_steps=n_steps, scores=scores,
                       key_map=key_map, progress=progress, threads=threads,
                       memory_budget=memory_budget, overwrite=overwrite,
                       max_shard_size=max_shard_size, group=group, int_policy=int_policy)
    finally:
        acc.close()


def _greedy(module: Any, sets: list[TensorSet], labels: list[str], singles: list[Loader],
            nonfloats: Loader, acc: Accumulators, evaluate: Evaluate, log: ResultsLog, *, out: Any, strict: bool,
            order: str, seed: int, with_replacement: bool, n_steps: int | None,
            scores: Sequence[float] | None, key_map: KeyMap, progress: bool, threads: int,
            memory_budget: int | str, overwrite: bool, max_shard_size: int | str,
            group: Any = None, int_policy: str = "first") -> SoupResult:
    n = len(sets)
    individual: list[float | None] = list(scores) if scores is not None else [None] * n
    if order == "score" and scores is None:
        for k in range(n):
            t0 = time.perf_counter()
            singles[k].run([1.0])
            individual[k] = as_score(evaluate(module), f"evaluate(module) for ingredient {k} "
                                     f"{labels[k]!r} alone")
            log.append("greedy-soup/individual", ingredients=[labels[k]], weights=[1.0],
                       score=individual[k], seconds=time.perf_counter() - t0)
    sequence = candidate_order(n, order=order, scores=individual, seed=seed,
                               with_replacement=with_replacement, n_steps=n_steps)
    # s_set holds S (accepted sum), t_set receives T = S + θ_i; swapped on acceptance.
    s_idx = 0
    step_loaders: dict[tuple[int, int], Loader] = {}
    model_loaders: dict[int, Loader] = {}
    counts = [0] * n
    n_acc, best = 0, float("-inf")
    history: list[dict[str, Any]] = []
    steps = _maybe_tqdm(sequence, progress)
    for step, k in enumerate(steps):
        t0 = time.perf_counter()
        s_set, t_set = acc.sets[s_idx], acc.sets[1 - s_idx]
        key = (k, s_idx)
        if key not in step_loaders:
            step_loaders[key] = Loader(t_set, [s_set, sets[k]], key_map=[_same, key_map],
                                       strict=False,
                                       threads=threads, memory_budget=memory_budget)
        step_loaders[key].run([0.0 if n_acc == 0 else 1.0, 1.0])  # T = S + θ_k
        if 1 - s_idx not in model_loaders:
            model_loaders[1 - s_idx] = Loader(singles[0].targets, [t_set], strict=False,
                                              threads=threads, memory_budget=memory_budget)
        model_loaders[1 - s_idx].run([1.0], post_scale=fp32_reciprocal(n_acc + 1),
                                     nonfloats=False)
        tentative = [float(c + (i == k)) for i, c in enumerate(counts)]
        nonfloats.run(tentative, floats=False, int_policy=int_policy)
        if n_acc == 0 and individual[k] is not None and not with_replacement:
            score = float(individual[k])  # the soup {θ_k} is θ_k: already scored
        else:
            members = [labels[i] for i in range(n) if counts[i] or i == k]
            score = as_score(evaluate(module), f"evaluate(module) at greedy step {step} for "
                             f"candidate ingredient {k} {labels[k]!r} (tentative soup of "
                             f"{members})")
        ok = n_acc == 0 or accepts(score, best, strict)
        weights = [c / (n_acc + 1) for c in counts]
        weights[k] += 1 / (n_acc + 1)
        record = {"step": step, "candidate": k, "label": labels[k], "score": score,
                  "accepted": ok, "n_ingredients": n_acc + 1}
        history.append(record)
        log.append("greedy-soup/step", ingredients=labels, weights=weights, score=score,
                   candidate=labels[k], accepted=ok, seconds=time.perf_counter() - t0)
        if ok:
            s_idx = 1 - s_idx
            counts[k] += 1
            n_acc += 1
            best = score
    # Leave the final soup in the model (the last tentative one may have been rejected).
    final = acc.sets[s_idx]
    if s_idx not in model_loaders:
        model_loaders[s_idx] = Loader(singles[0].targets, [final], strict=False,
                                      threads=threads, memory_budget=memory_budget)
    model_loaders[s_idx].run([1.0], post_scale=fp32_reciprocal(n_acc), nonfloats=False)
    nonfloats.run([float(c) for c in counts], floats=False, int_policy=int_policy)
    result = SoupResult("greedy-soup", labels, counts, best, individual, history,
                        int_policy=int_policy)
    log.append("greedy-soup", ingredients=labels, weights=result.weights, score=best,
               counts=counts)
    if out is not None:
        def write() -> Any:
            return _write_greedy(out, result, nonfloats, final,
                                 fp32_reciprocal(n_acc), overwrite, max_shard_size, threads,
                                 memory_budget)

        result.out = write() if group is None else group.on_rank0(write)
    return result


def _write_greedy(out: Any, result: SoupResult, everyone: Loader, final: TensorSet,
                  scale: float, overwrite: bool, max_shard_size: int | str, threads: int,
                  memory_budget: int | str) -> Any:
    """Stream S · fp32(1/n) (float tensors) and the non-float tensors of the accepted
    ingredients under the soup's int policy into ``out``."""
    outputs = []
    for g in everyone.groups:
        if g.ref.is_float:
            s = final.tensors[g.name]
            outputs.append(WriteTensor(g.name, g.ref.dtype, g.ref.shape, "sum", [(s, 1.0)],
                                       g.ref.n_bytes, g.ref.n_elems, post_scale=scale))
        elif None not in g.inputs:
            op, chosen = nonfloat_inputs(g.inputs, [float(c) for c in result.counts],
                                         result.int_policy)
            outputs.append(WriteTensor(g.name, g.ref.dtype, g.ref.shape, op,
                                       [(r, 1.0) for r in chosen], g.ref.n_bytes, g.ref.n_elems))
    return write_tensors(out, outputs, [final, *everyone.inputs],
                         metadata=_recipe_metadata(result), max_shard_size=max_shard_size,
                         overwrite=overwrite, threads=threads,
                         memory_budget=memory_budget)["out"]


def _maybe_tqdm(items: list[int], enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="greedy soup", unit="step")
