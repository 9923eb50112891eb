"""Image transforms of the harness, all built from torchvision and open_clip.

Evaluation uses the model's own preprocessing: ``open_clip``'s preprocess config
(resolution, mean/std, interpolation, resize mode; what
``open_clip.create_model_and_transforms`` returns as ``preprocess_val``) — the PIL
pipeline for image files, and the same steps as torchvision ``v2`` ops for the
in-memory uint8 tensors of the built-in digit domains. Training uses torchvision's
augmentations (``RandomResizedCrop``, ``RandAugment``, ``AutoAugment``, flips, colour
jitter) and batch-level ``MixUp`` / ``CutMix`` from ``torchvision.transforms.v2``.

Example:
    >>> cfg = {"size": (32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    ...        "interpolation": "bicubic", "resize_mode": "shortest"}
    >>> tensor_eval_transform(cfg)(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (open_clip OPENAI_DATASET_MEAN)
STD = (0.26862954, 0.26130258, 0.27577711)
AUG_LEVELS = ("none", "minimal", "medium", "strong", "autoaugment")


def default_cfg(image_size: int) -> dict[str, Any]:
    """open_clip's default preprocess config at ``image_size`` (CLIP mean/std, bicubic)."""
    return {"size": (image_size, image_size), "mean": MEAN, "std": STD,
            "interpolation": "bicubic", "resize_mode": "shortest"}


def preprocess_cfg(clip: Any) -> dict[str, Any]:
    """The preprocess config open_clip attached to ``clip`` (size, mean, std,
    interpolation, resize_mode), as ``open_clip.get_model_preprocess_cfg`` gives it."""
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(clip))
    size = cfg.get("size", clip.visual.image_size)
    cfg["size"] = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return {k: cfg[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")
            if k in cfg}


def _interp(cfg: dict[str, Any]) -> Any:
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[cfg.get("interpolation", "bicubic")]


def eval_transform(cfg: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """open_clip's own evaluation transform (PIL image → normalised float tensor).

    It is the ``preprocess_val`` that ``open_clip.create_model_and_transforms`` builds.
    """
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def split_eval_transform(cfg: dict[str, Any]
                         ) -> tuple[Callable[[Any], torch.Tensor], Callable[[torch.Tensor],
                                                                            torch.Tensor]]:
    """open_clip's evaluation transform in two parts: the per-image part run by the
    DataLoader workers (resize, crop, RGB → a uint8 tensor, 4× smaller to pass between
    processes than floats) and the per-batch part (``ToTensor``'s ÷255 and
    ``Normalize``, vectorised). Together they give exactly ``preprocess_val``'s output.
    """
    from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor
    from torchvision.transforms import functional as TF

    full = eval_transform(cfg)
    steps = list(full.transforms)
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(
            steps[-1], Normalize):
        return full, lambda x: x  # an unexpected pipeline: run all of it per image
    mean, std = steps[-1].mean, steps[-1].std

    def per_batch(x: torch.Tensor) -> torch.Tensor:
        return TF.normalize(x.to(torch.get_default_dtype()).div(255), mean, std)

    return Compose(steps[:-2] + [PILToTensor()]), per_batch


def tensor_eval_transform(cfg: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation transform on uint8 tensors (one image or a batch): grey → RGB,
    resize (shorter side) and centre crop to the model's size when they differ,
    ÷255 and normalise — ``preprocess_val``'s steps as torchvision functional ops
    on a whole batch at once."""
    from torchvision.transforms.v2 import functional as TF

    h, w = cfg["size"]
    mean, std = list(cfg["mean"]), list(cfg["std"])
    interp = _interp(cfg)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (h, w):
            x = TF.center_crop(TF.resize(x, [min(h, w)], interpolation=interp,
                                         antialias=True), [h, w])
        x = x.to(torch.get_default_dtype()).div(255) if x.dtype == torch.uint8 else x.float()
        grey = x.shape[-3] == 1
        if grey:  # a view; normalising it writes the three channels out once
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        return TF.normalize(x, mean, std, inplace=not grey)

    return apply


def train_transform(cfg: dict[str, Any], level: str = "minimal", *, magnitude: float = 15.0,
                    n_ops: int = 2, hflip: bool = False) -> Callable[[Any], torch.Tensor]:
    """Per-image training augmentation (PIL image or uint8 tensor → normalised float).

    Levels (Model soups App J.2.1): ``none`` (resize + centre crop); ``minimal``
    (``RandomResizedCrop`` over 90–100% of the area, square); ``medium``
    (``RandomResizedCrop`` 35–100%, aspect 3/4–4/3, ``RandomRotation(10)``,
    ``ColorJitter(0.2, 0.2)``); ``strong`` (torchvision ``RandAugment`` with
    ``n_ops`` ops at ``magnitude`` on its 31-bin scale); ``autoaugment`` (torchvision
    ``AutoAugment``, ImageNet policy). ``hflip`` adds ``RandomHorizontalFlip``.

    Example:
        >>> t = train_transform(default_cfg(16), "strong", magnitude=10)
        >>> t(torch.zeros(1, 20, 20, dtype=torch.uint8)).shape
        torch.Size([3, 16, 16])
    """
    from torchvision.transforms import v2

    h, w = cfg["size"]
    interp = _interp(cfg)
    resize = [v2.Resize(min(h, w), interpolation=interp, antialias=True), v2.CenterCrop((h, w))]
    ops: list[Any] = [v2.ToImage(), v2.RGB()]
    if level in ("none", None):
        ops += resize
    elif level == "minimal":
        ops.append(v2.RandomResizedCrop((h, w), scale=(0.9, 1.0), ratio=(1.0, 1.0),
                                        interpolation=interp, antialias=True))
    elif level == "medium":
        ops += [v2.RandomResizedCrop((h, w), scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3),
                                     interpolation=interp, antialias=True),
                v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR),
                v2.ColorJitter(brightness=0.2, contrast=0.2)]
    elif level == "strong":
        ops += resize + [v2.RandAugment(num_ops=int(n_ops), magnitude=round(magnitude))]
    elif level == "autoaugment":
        ops += resize + [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    else:
        raise ValueError(f"unknown augmentation level {level!r} ({'|'.join(AUG_LEVELS)})")
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(cfg["mean"]), list(cfg["std"]))]
    return v2.Compose(ops)


def batch_mix(mixup: float, cutmix: float, num_classes: int
              ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """torchvision's ``MixUp(alpha=mixup)`` and/or ``CutMix(alpha=cutmix)`` on a batch
    (one of the two drawn per batch when both are on); labels become soft targets.
    None when both are 0."""
    from torchvision.transforms import v2

    mixes = ([v2.MixUp(alpha=float(mixup), num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=float(cutmix), num_classes=num_classes)] if cutmix > 0 else [])
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
