"""Output-space baselines of Model soups (SPEC §1.6): the logit ensemble (mean of
every ingredient's logits) and the greedy ensemble (the greedy-soup loop over logits
instead of weights). Each ingredient is streamed into the live model once; only the
held-out logits (examples × classes) are kept, never the models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.live import Loader
from ..formats.keymap import KeyMap
from ..formats.sources import open_input, target_set
from .results import ResultsLog, as_log
from .soups import accepts, candidate_order

Predict = Callable[[Any], Any]
Score = Callable[[np.ndarray], float]


@dataclass
class EnsembleResult:
    """Members chosen, their multiplicities and the ensemble's score."""

    method: str
    ingredients: list[str]
    counts: list[int]
    score: float
    individual_scores: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def _all_logits(module: Any, ingredients: Sequence[Any], predict: Predict, key_map: KeyMap,
                strict: bool, threads: int) -> tuple[list[str], list[np.ndarray]]:
    sets = [open_input(x) for x in ingredients]
    target = target_set(module)
    logits = []
    for s in sets:
        Loader(target, [s], key_map=key_map, strict=strict, threads=threads).run([1.0])
        out = predict(module)
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        logits.append(out.astype(np.float64))
    return [s.label for s in sets], logits


def logit_ensemble(module: Any, ingredients: Sequence[Any], predict: Predict, score: Score, *,
                   key_map: KeyMap = None, strict: bool = True,
                   log: ResultsLog | str | None = None, threads: int = 0) -> EnsembleResult:
    """Score the mean of every ingredient's logits (cost: N forward passes).

    Args:
        module: live model each ingredient is loaded into in turn.
        ingredients: checkpoints, modules or dicts.
        predict: ``predict(module) -> logits`` on the held-out set (array or tensor).
        score: ``score(logits) -> float`` (e.g. accuracy of the argmax).
        key_map, strict: name matching (see :func:`ladle.load_into`).
        log: JSONL results log.
        threads: engine threads.

    Returns:
        An :class:`EnsembleResult` with every ingredient counted once.

    Example:
        >>> logit_ensemble(model, paths, predict, accuracy).score   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    labels, logits = _all_logits(module, ingredients, predict, key_map, strict, threads)
    value = float(score(sum(logits) / len(logits)))
    as_log(log).append("logit-ensemble", ingredients=labels, weights=[1 / len(labels)] * len(
        labels), score=value, seconds=time.perf_counter() - t0)
    return EnsembleResult("logit-ensemble", labels, [1] * len(labels), value,
                          [float(score(x)) for x in logits])


def greedy_ensemble(module: Any, ingredients: Sequence[Any], predict: Predict, score: Score, *,
                    strict: bool = True, order: str = "score", seed: int = 0,
                    with_replacement: bool = False, n_steps: int | None = None,
                    key_map: KeyMap = None, strict_keys: bool = True,
                    log: ResultsLog | str | None = None, threads: int = 0) -> EnsembleResult:
    """The greedy-soup selection over logits: add a member when the mean of the
    members' logits scores better (strictly, unless ``strict=False``).

    Args: as :func:`ladle.greedy_soup`, with ``predict``/``score`` of
        :func:`logit_ensemble` instead of ``evaluate``.

    Returns:
        An :class:`EnsembleResult`.

    Example:
        >>> greedy_ensemble(model, paths, predict, accuracy).counts   # doctest: +SKIP
    """
    log = as_log(log)
    labels, logits = _all_logits(module, ingredients, predict, key_map, strict_keys, threads)
    individual = [float(score(x)) for x in logits]
    sequence = candidate_order(len(labels), order=order, scores=individual, seed=seed,
                               with_replacement=with_replacement, n_steps=n_steps)
    total: np.ndarray | None = None
    counts = [0] * len(labels)
    best, n = float("-inf"), 0
    history = []
    for k in sequence:
        tentative = logits[k] if total is None else total + logits[k]
        value = float(score(tentative / (n + 1)))
        ok = n == 0 or accepts(value, best, strict)
        history.append({"candidate": k, "score": value, "accepted": ok})
        log.append("greedy-ensemble/step", ingredients=labels, candidate=labels[k],
                   score=value, accepted=ok)
        if ok:
            total, best, n = tentative, value, n + 1
            counts[k] += 1
    return EnsembleResult("greedy-ensemble", labels, counts, best, individual, history)
