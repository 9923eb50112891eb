"""Evaluation under distribution shift (SPEC §2.1–2.2): top-1 on an ID test set and
any number of shift sets, class-subset evaluation (logit masking; class maps pooled
per target class), averages, 95% Clopper–Pearson intervals, output-space ensembles.

Example:
    >>> logits = predict(model, test_set)                     # doctest: +SKIP
    >>> accuracy(logits, test_set)                            # doctest: +SKIP
    0.953
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data import ImageSet
from .loaders import LoaderOptions, eval_batches


@torch.no_grad()
def predict(model: Any, data: Any, *, batch_size: int = 512,
            loader: LoaderOptions | dict[str, Any] | None = None,
            autocast: str | None = None, channels_last: bool = False) -> torch.Tensor:
    """Logits (N, k) of ``model`` on every image of ``data`` (eval mode, float32),
    streamed batch by batch through the model's own preprocessing.

    Args:
        model: an :class:`~.zeroshot.ImageClassifier` (its ``preprocess`` config is used).
        data: an in-memory :class:`ImageSet`, a streaming :class:`~.files.FileSet` or
            shard set (a shard set's ``labels`` are filled by this pass).
        batch_size: images per forward pass.
        loader: DataLoader options (workers, prefetch; pinned memory on CUDA).
        autocast: ``bf16`` / ``fp16`` mixed precision on CUDA (None: fp32).
        channels_last: feed NHWC (``torch.channels_last``) batches.

    Example:
        >>> predict(model, test_set).shape                         # doctest: +SKIP
        torch.Size([1000, 10])
    """
    from .precision import autocast_context, to_device

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    opts = LoaderOptions.of(loader)
    opts = LoaderOptions(**{**opts.__dict__, "device": str(device)})
    out, labels = [], []
    with autocast_context(device, autocast):
        for x, y, _ in eval_batches(data, batch_size, getattr(model, "preprocess", None),
                                    options=opts):
            out.append(model(to_device(x, device, channels_last)).float().cpu())
            labels.append(y)
    model.train(was_training)
    if getattr(data, "labels", None) is None:  # streamed shards: labels known now
        data.labels = torch.cat(labels).long()
    return torch.cat(out).float()


def predictions(logits: torch.Tensor | np.ndarray, data: ImageSet) -> torch.Tensor:
    """Predicted labels in the dataset's label space (subset masking / class maps).

    Example:
        >>> ds = ImageSet("s", torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.tensor([1]),
        ...               ["a", "b", "c"], class_subset=[1, 2])
        >>> predictions(torch.tensor([[9.0, 1.0, 0.0]]), ds)
        tensor([1])
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if data.class_map:
        n_target = max(data.class_map.values()) + 1
        pooled = torch.full((logits.shape[0], n_target), -torch.inf, dtype=logits.dtype)
        for src, dst in data.class_map.items():
            pooled[:, dst] = torch.maximum(pooled[:, dst], logits[:, src])
        return pooled.argmax(dim=1)
    if data.class_subset:
        mask = torch.full((logits.shape[1],), -torch.inf, dtype=logits.dtype)
        mask[list(data.class_subset)] = 0
        logits = logits + mask
    return logits.argmax(dim=1)


def accuracy(logits: torch.Tensor | np.ndarray, data: ImageSet) -> float:
    """Top-1 accuracy in [0, 1] (with the set's class subset or class map).

    Example:
        >>> ds = ImageSet("s", torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]),
        ...               ["a", "b"])
        >>> accuracy(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), ds)
        0.5
    """
    return float((predictions(logits, data) == data.labels).double().mean())


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial (Clopper–Pearson) confidence interval for k successes in n.

    Example:
        >>> lo, hi = clopper_pearson(50, 100)
        >>> round(lo, 4), round(hi, 4)
        (0.3983, 0.6017)
    """
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def evaluate_logits(logits: dict[str, torch.Tensor], sets: dict[str, ImageSet], *,
                    id_name: str | None = None, heldout_name: str = "heldout",
                    intervals: bool = False) -> dict[str, Any]:
    """Accuracy per set plus ``avg_ood`` (unweighted mean over the shift sets: every
    set except ``id_name`` and ``heldout_name``) and ``avg_id_ood``; optionally
    ``ci/<name>`` Clopper–Pearson intervals.

    Example:
        >>> evaluate_logits(all_logits, sets, id_name="test")      # doctest: +SKIP
        {'test': 0.97, 'fonts': 0.8, 'avg_ood': 0.8, 'avg_id_ood': 0.885}
    """
    res: dict[str, Any] = {}
    for name, ds in sets.items():
        res[name] = accuracy(logits[name], ds)
        if intervals:
            k = round(res[name] * len(ds))
            res[f"ci/{name}"] = clopper_pearson(k, len(ds))
    shifts = [n for n in sets if n not in (id_name, heldout_name)]
    if shifts:
        res["avg_ood"] = float(np.mean([res[n] for n in shifts]))
        if id_name is not None:
            res["avg_id_ood"] = (res[id_name] + res["avg_ood"]) / 2
    return res


def evaluate_model(model: Any, sets: dict[str, Any], *, id_name: str | None = None,
                   intervals: bool = False, batch_size: int = 512,
                   return_logits: bool = False,
                   loader: LoaderOptions | dict[str, Any] | None = None,
                   autocast: str | None = None) -> dict[str, Any]:
    """:func:`predict` on every set (streamed) then :func:`evaluate_logits`: one
    accuracy per shift, the averages, optional intervals.

    Example:
        >>> evaluate_model(model, {"test": test, "fonts": fonts}, id_name="test")  # doctest: +SKIP
    """
    logits = {n: predict(model, ds, batch_size=batch_size, loader=loader, autocast=autocast)
              for n, ds in sets.items()}
    res = evaluate_logits(logits, sets, id_name=id_name, intervals=intervals)
    return (res, logits) if return_logits else res


def output_ensemble(logits0: torch.Tensor, logits1: torch.Tensor, alpha: float, *,
                    kind: str = "logit") -> torch.Tensor:
    """Output-space ensemble of two models (SPEC §1.4): ``logit`` mixes logits,
    ``softmax`` mixes probabilities, ``random`` takes each example's prediction from θ1
    with probability α and from θ0 otherwise (random interpolation, fixed seed).

    Example:
        >>> output_ensemble(torch.zeros(1, 2), torch.ones(1, 2), 0.25)
        tensor([[0.2500, 0.2500]])
    """
    if kind == "logit":
        return (1 - alpha) * logits0 + alpha * logits1
    if kind == "softmax":
        return (1 - alpha) * logits0.softmax(-1) + alpha * logits1.softmax(-1)
    if kind == "random":
        from ..analysis.baselines import random_interpolation

        return torch.from_numpy(random_interpolation(logits0, logits1, alpha))
    raise ValueError(f"unknown ensemble kind {kind!r} (logit|softmax|random)")


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logit ensemble of any number of models (Model soups' ensemble baseline)."""
    return torch.stack(list(logits)).mean(dim=0)
