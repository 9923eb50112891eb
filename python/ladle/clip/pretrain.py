"""Contrastive pre-training of a (tiny) CLIP on captioned images — the stand-in for
pre-trained CLIP weights in the offline demo.

The loss is CLIP's symmetric InfoNCE, except that captions which are identical within
a batch count as positives of each other (the digit data has many repeated captions),
so targets are the row-normalised caption-equality matrix.

Example:
    >>> clip, tok = create_clip("ladle-tiny-clip")                 # doctest: +SKIP
    >>> pretrain_clip(clip, tok, splits["pretrain"], epochs=8)     # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from .data import ImageSet
from .finetune import lr_at


def pretrain_clip(clip: Any, tokenizer: Any, data: ImageSet, *, epochs: int = 8,
                  batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 0.1,
                  warmup_steps: int = 20, aug: str = "medium", seed: int = 0,
                  progress: bool = False, log: Any = None) -> dict[str, Any]:
    """Train ``clip`` in place on ``data`` (images + ``captions``).

    Args:
        clip: open_clip model (``encode_image``, ``encode_text``, ``logit_scale``).
        tokenizer: its tokenizer.
        data: an :class:`ImageSet` with one caption per image.
        epochs, batch_size, lr, weight_decay, warmup_steps: AdamW + cosine.
        aug: augmentation level of the images.
        seed: data order and augmentation.
        progress: tqdm bar.
        log: optional :class:`ladle.ResultsLog`.

    Returns:
        ``{"steps", "final_loss", "seconds"}``.

    Example:
        >>> pretrain_clip(clip, tok, data, epochs=1)["steps"]      # doctest: +SKIP
        24
    """
    from ..soups.results import as_log

    if not data.captions:
        raise ValueError(f"{data.name}: contrastive pre-training needs captions")
    log = as_log(log)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    unique = sorted(set(data.captions))
    cap_id = {c: i for i, c in enumerate(unique)}
    ids = torch.tensor([cap_id[c] for c in data.captions])
    tokens = tokenizer(unique)
    decay = [p for p in clip.parameters() if p.ndim >= 2]
    rest = [p for p in clip.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = -(-len(data) // batch_size)
    total = steps_per_epoch * epochs
    from .loaders import EpochSampler, train_loader
    from .transforms import preprocess_cfg, train_transform

    sampler = EpochSampler(len(data), shuffle=True, seed=seed)
    loader = train_loader(data, train_transform(preprocess_cfg(clip), aug), batch_size,
                          sampler, drop_last=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="pretrain tiny CLIP", unit="step", leave=False)
    clip.train()
    step, loss_v = 0, float("nan")
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for img, _, idx in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, lr, warmup_steps)
            cid = ids[idx]
            uniq, inv = torch.unique(cid, return_inverse=True)
            f_img = F.normalize(clip.encode_image(img), dim=-1)
            f_txt = F.normalize(clip.encode_text(tokens[uniq]), dim=-1)
            scale = clip.logit_scale.exp().clamp(max=100)
            logits = scale * f_img @ f_txt.T  # (B, U): each image vs each distinct caption
            loss_i = F.cross_entropy(logits, inv)
            # text side: each distinct caption vs the images; positives = images with it
            pos = (inv[None, :] == torch.arange(len(uniq))[:, None]).float()
            loss_t = -(pos * F.log_softmax(logits.T, dim=1)).sum(1).div(pos.sum(1)).mean()
            loss = (loss_i + loss_t) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)
            loss_v = float(loss.detach())
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
        log.append("pretrain/epoch", epoch=epoch + 1, step=step, loss=loss_v)
    if bar is not None:
        bar.close()
    clip.eval()
    return {"steps": step, "final_loss": loss_v, "seconds": time.perf_counter() - t0}
