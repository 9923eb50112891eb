"""FLYP ("Finetune like you pretrain", Goyal et al. 2023): fine-tune both CLIP towers
with CLIP's own contrastive loss, the captions being class-name prompts, then build
the classifier's head from the fine-tuned text tower.

Each training image gets the caption ``template.format(c=classname)`` with a template
drawn at random from the run's prompt set; the loss is CLIP's symmetric InfoNCE over
the batch (``logit_scale`` learned, clamped at 100 as in CLIP; images of the same
class in a batch are negatives, as in FLYP). The result is an
:class:`~.zeroshot.ImageClassifier` with the zero-shot model's keys, so WiSE-FT and
the soups apply unchanged (FLYP's own results use WiSE-FT on top).

Example:
    >>> model = flyp_finetune(clip, tok, train, names, templates, cfg)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of matched (image_i, text_i) pairs (features normalised here).

    Example:
        >>> e = torch.eye(3)
        >>> round(float(clip_loss(e, e, 100.0)), 6)
        0.0
        >>> round(float(clip_loss(torch.ones(4, 2), torch.ones(4, 2), 1.0)), 4)  # log 4
        1.3863
    """
    i = F.normalize(image_features, dim=-1)
    t = F.normalize(text_features, dim=-1)
    logits = scale * i @ t.T
    target = torch.arange(len(i), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def flyp_finetune(clip: Any, tokenizer: Any, train: Any, classnames: Sequence[str],
                  templates: Sequence[str], cfg: Any, *, log: Any = None) -> Any:
    """Contrastively fine-tune a copy of ``clip`` on ``train`` and return the classifier.

    Args:
        clip: the pre-trained open_clip model (left untouched).
        tokenizer: its tokenizer.
        train: training set (labels index ``classnames``).
        classnames, templates: the captions' class names and prompt templates (the
            head is built from the same prompts).
        cfg: a :class:`~.config.FinetuneConfig` (epochs, batch_size, lr, weight decay,
            warm-up, clipping, augmentation, seed, max_steps, device, autocast).
        log: optional :class:`ladle.ResultsLog`.

    Returns:
        ``(classifier, history)``: the :class:`~.zeroshot.ImageClassifier` of the
        fine-tuned towers (CPU, eval mode) and per-epoch ``{"epoch", "loss"}``.
    """
    from ..soups.results import as_log
    from .finetune import _optimizer, _steps_per_epoch, lr_at
    from .loaders import EpochSampler, train_loader
    from .precision import autocast_context, to_device
    from .transforms import preprocess_cfg, train_transform
    from .zeroshot import build_zeroshot_classifier

    log = as_log(log)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = copy.deepcopy(clip).to(device).train()
    tokens = {(c, t): tokenizer([t.format(c=c)])[0] for c in range(len(classnames))
              for t in templates}
    transform = train_transform(preprocess_cfg(clip), cfg.aug, magnitude=cfg.aug_magnitude,
                                n_ops=cfg.aug_n_ops, hflip=cfg.hflip)
    sampler = EpochSampler(len(train), shuffle=True, seed=cfg.seed * 7919)
    loader = train_loader(train, transform, cfg.batch_size, sampler)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = _optimizer(params, cfg, cfg.lr)
    total = _steps_per_epoch(len(train), cfg, 1) * cfg.epochs
    total = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    g = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []
    for epoch in range(1, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        losses = []
        for x, y, _ in loader:
            if step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            picks = torch.randint(len(templates), (len(y),), generator=g).tolist()
            text = torch.stack([tokens[(int(c), templates[k])] for c, k in zip(y, picks)])
            with autocast_context(device, cfg.autocast):
                fi = model.encode_image(to_device(x, device))
                ft = model.encode_text(text.to(device))
            loss = clip_loss(fi.float(), ft.float(), model.logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        record = {"run": cfg.name, "stage": "flyp", "epoch": epoch,
                  "loss": sum(losses) / max(1, len(losses))}
        history.append(record)
        log.append("flyp/epoch", **record)
        if step >= total:
            break
    model = model.to("cpu").eval()
    return build_zeroshot_classifier(model, tokenizer, classnames, templates), history
