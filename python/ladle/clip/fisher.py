"""Fisher-weighted WiSE-FT (the WiSE-FT code's ``fisher.py`` option; Matena & Raffel's
Fisher merging applied to θ0 and θ1).

The diagonal Fisher of a classifier is the mean over examples of the squared
gradient of the log-likelihood of a label drawn from the model's own prediction
(batch size 1, as the original computes it); ``sample=False`` takes the expectation
over labels exactly instead (the "true" Fisher, deterministic). The merge is, per
element,

    θ = ((1 − α)·F0·θ0 + α·F1·θ1) / ((1 − α)·F0 + α·F1),   F = max(F, floor),

with a tensor that has no Fisher taking F = 1 (plain interpolation), as the original;
non-float tensors come from θ0 (θ1 at α = 1). It is computed tensor by tensor from
the four safetensors files (fp32) and written into a live model in place — never a
whole checkpoint in memory.

Example:
    >>> F0 = diagonal_fisher(zs_model, train, examples=500)          # doctest: +SKIP
    >>> fisher_merge_into(model, "zs.safetensors", "ft.safetensors",
    ...                   "F0.safetensors", "F1.safetensors", alpha=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F


def diagonal_fisher(model: Any, data: Any, *, examples: int | None = None,
                    sample: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model`` (an :class:`~.zeroshot.ImageClassifier`) on ``data``.

    Args:
        model: the classifier (its device is used; eval-mode preprocessing).
        data: any harness dataset.
        examples: use only the first this many examples (None: all).
        sample: draw the label from softmax(logits) (the original); False: exact
            expectation over the labels.
        seed: label draws.

    Returns:
        name -> mean squared gradient (fp32, CPU), for parameters that get gradients.
    """
    from .loaders import eval_batches

    device = next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    n = 0
    limit = len(data) if examples is None else min(examples, len(data))
    for x, _, _ in eval_batches(data, 64, model.preprocess):
        for xi in x:
            if n >= limit:
                break
            logits = model(xi[None].to(device))[0]
            log_p = F.log_softmax(logits.float(), dim=-1)
            probs = log_p.detach().exp().cpu()
            if sample:
                targets = [(int(torch.multinomial(probs, 1, generator=g)), 1.0)]
            else:
                targets = list(enumerate(probs.tolist()))
            for k, (y, w) in enumerate(targets):
                model.zero_grad(set_to_none=True)
                log_p[y].backward(retain_graph=k < len(targets) - 1)
                for name, p in params.items():
                    if p.grad is not None:
                        acc[name] += w * p.grad.detach().float() ** 2
            n += 1
        if n >= limit:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: (a / max(n, 1)).cpu() for name, a in acc.items()}


def save_fisher(fisher: dict[str, torch.Tensor], path: str | os.PathLike) -> Any:
    """Write a Fisher dict as safetensors (atomically, via ``ladle.save``)."""
    import ladle

    return ladle.save(fisher, path, overwrite=True)


@torch.no_grad()
def fisher_merge_into(module: Any, theta0: str | os.PathLike, theta1: str | os.PathLike,
                      fisher0: str | os.PathLike, fisher1: str | os.PathLike, alpha: float,
                      *, floor: float = 1e-8) -> None:
    """Write the Fisher-weighted interpolation of θ0 and θ1 into ``module`` in place,
    reading one tensor at a time from the safetensors files.

    Raises:
        MismatchError: a model tensor missing from θ0/θ1, or a Fisher for only one of
            the two endpoints (the original asserts both or neither).
    """
    from safetensors import safe_open

    from ..errors import MismatchError
    from ..formats.sources import module_tensors

    targets = module_tensors(module)
    with safe_open(str(theta0), "pt") as t0, safe_open(str(theta1), "pt") as t1, \
            safe_open(str(fisher0), "pt") as f0, safe_open(str(fisher1), "pt") as f1:
        keys0, keys1 = set(t0.keys()), set(t1.keys())
        fk0, fk1 = set(f0.keys()), set(f1.keys())
        for name, target in targets.items():
            for label, keys in ((theta0, keys0), (theta1, keys1)):
                if name not in keys:
                    raise MismatchError(f"{label}: no tensor '{name}'")
            if (name in fk0) != (name in fk1):
                raise MismatchError(f"'{name}' has a Fisher in only one of {fisher0}, "
                                    f"{fisher1}")
            if not target.is_floating_point():
                target.copy_((t1 if alpha == 1.0 else t0).get_tensor(name))
                continue
            a = t0.get_tensor(name).float()
            b = t1.get_tensor(name).float()
            if name in fk0:
                w0 = f0.get_tensor(name).float().clamp_min(floor)
                w1 = f1.get_tensor(name).float().clamp_min(floor)
            else:
                w0 = w1 = torch.ones_like(a)
            c0, c1 = (1.0 - alpha) * w0, alpha * w1
            target.copy_(((c0 * a + c1 * b) / (c0 + c1)).to(target.dtype))
