"""Datasets for the harness: an in-memory :class:`ImageSet`, ImageFolder and CSV
loaders, the built-in offline digit domains, held-out splits, preprocessing and the
minimal / medium / strong augmentations (vectorised on batches, CPU-friendly).

Images are kept as uint8 tensors (N, C, H, W); :func:`prepare` turns a batch into the
normalised float input of a model at its resolution.

Example:
    >>> from ladle.clip.data import heldout_split
    >>> train, heldout = heldout_split(100, 0.1, seed=0)
    >>> len(train), len(heldout)
    (90, 10)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (open_clip OPENAI_DATASET_MEAN)
STD = (0.26862954, 0.26130258, 0.27577711)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images (uint8, N×C×H×W), integer labels and class names.

    Attributes:
        name: shown in logs and reports.
        images: uint8 tensor (N, C, H, W), C ∈ {1, 3}.
        labels: int64 tensor (N,), indices into the *head's* classes.
        classnames: the head's class names.
        class_subset: evaluate with logits masked to these head classes (IN-R/IN-A style).
        class_map: head class -> dataset class; predictions are pooled (max logit) per
            dataset class and labels are dataset classes (ObjectNet style).
        captions: one caption per image (contrastive pre-training only).
        domains: domain label per image (optional).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    class_subset: list[int] | None = None
    class_map: dict[int, int] | None = None
    captions: list[str] | None = None
    domains: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Sequence[int] | torch.Tensor, name: str | None = None) -> ImageSet:
        """A new set holding the examples at ``index`` (same classes and masks)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        return ImageSet(name or self.name, self.images[idx], self.labels[idx],
                        list(self.classnames), self.class_subset, self.class_map,
                        [self.captions[i] for i in pick] if self.captions else None,
                        [self.domains[i] for i in pick] if self.domains else None,
                        dict(self.meta))


def concat(sets: Sequence[ImageSet], name: str) -> ImageSet:
    """Concatenate sets with the same classes and image size."""
    caps = [c for s in sets for c in (s.captions or [""] * len(s))]
    doms = [d for s in sets for d in (s.domains or [s.name] * len(s))]
    return ImageSet(name, torch.cat([s.images for s in sets]),
                    torch.cat([s.labels for s in sets]), list(sets[0].classnames),
                    captions=caps, domains=doms)


# ---------------------------------------------------------------- held-out splits

def heldout_split(n: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic disjoint (train, held-out) index lists covering ``range(n)``.

    Args:
        n: number of examples.
        fraction: share withheld (Model soups: ≈2% of ImageNet train).
        seed: permutation seed (numpy PCG64).

    Returns:
        ``(train_indices, heldout_indices)``, each sorted.

    Example:
        >>> tr, ho = heldout_split(10, 0.2, seed=0)
        >>> len(tr), len(ho), set(tr) & set(ho)
        (8, 2, set())
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    k = round(n * fraction)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


def split_record(train: Sequence[int], heldout: Sequence[int], seed: int,
                 fraction: float) -> dict[str, Any]:
    """A JSON-able record of a split (sizes, seed and a hash of the held-out indices)."""
    digest = hashlib.sha256(json.dumps(list(heldout)).encode()).hexdigest()[:16]
    return {"n_train": len(train), "n_heldout": len(heldout), "seed": seed,
            "fraction": fraction, "heldout_sha256": digest}


# ---------------------------------------------------------------- preprocessing

def prepare(images: torch.Tensor, image_size: int, *, mean: Sequence[float] = MEAN,
            std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 (or [0, 1] float) batch → normalised float (B, 3, S, S) at ``image_size``.

    Example:
        >>> prepare(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 16).shape
        torch.Size([2, 3, 16, 16])
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def batches(data: ImageSet, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            rank: int = 0, world: int = 1, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels, indices)``; with ``world > 1`` each rank gets
    every ``world``-th example of the (shuffled) order.

    Example:
        >>> next(batches(ImageSet("x", torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
        ...      torch.arange(3), ["a"]), 2))[1]
        tensor([0, 1])
    """
    n = len(data)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
             else torch.arange(n))
    if world > 1:  # equal step counts on every rank (DDP would wait forever otherwise)
        order = order[:len(order) - len(order) % world]
    order = order[rank::world]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield data.images[idx], data.labels[idx], idx


# ---------------------------------------------------------------- augmentation

def _affine(x: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor,
            ty: torch.Tensor, shear: torch.Tensor | None = None,
            aspect: torch.Tensor | None = None) -> torch.Tensor:
    b = x.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    sh = torch.zeros(b) if shear is None else shear
    ar = torch.ones(b) if aspect is None else aspect
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * cos * ar.sqrt()
    theta[:, 0, 1] = -scale * sin + sh
    theta[:, 1, 0] = scale * sin
    theta[:, 1, 1] = scale * cos / ar.sqrt()
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment(images: torch.Tensor, level: str, g: torch.Generator, *, hflip: bool = False,
            magnitude: float = 15.0, n_ops: int = 2) -> torch.Tensor:
    """Augment a uint8 batch; returns float in [0, 1] (B, C, H, W).

    Levels (Model soups App J.2.1): ``none``; ``minimal`` = random crop covering
    90–100% of the area; ``medium`` = timm-like random resized crop (area 35–100%,
    aspect 3/4–4/3), small rotations and brightness/contrast jitter; ``strong`` =
    RandAugment-style: ``n_ops`` ops per image at magnitude ``magnitude``/30 drawn
    from {rotate, shear, translate, contrast, brightness, solarize, posterize, blur,
    noise, identity}, vectorised per op. ``hflip`` adds horizontal flips (off for digits).

    Example:
        >>> x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
        >>> augment(x, "strong", torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    b = x.shape[0]
    if level in ("none", None):
        pass
    elif level == "minimal":
        side = _u(g, b, 0.9, 1.0).sqrt()
        x = _affine(x, side, torch.zeros(b), _u(g, b, -1, 1) * (1 - side),
                    _u(g, b, -1, 1) * (1 - side))
    elif level == "medium":
        side = _u(g, b, 0.35, 1.0).sqrt()
        x = _affine(x, side, _u(g, b, -10, 10) * math.pi / 180,
                    _u(g, b, -1, 1) * (1 - side), _u(g, b, -1, 1) * (1 - side),
                    aspect=torch.exp(_u(g, b, math.log(3 / 4), math.log(4 / 3))))
        x = _jitter(x, _u(g, b, 0.8, 1.2), _u(g, b, 0.8, 1.2))
    elif level == "strong":
        x = _randaugment(x, g, magnitude / 30.0, n_ops)
    else:
        raise ValueError(f"unknown augmentation level {level!r} (none|minimal|medium|strong)")
    if hflip:
        flip = torch.rand(b, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
    return x.clamp(0, 1)


def _jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.view(-1, 1, 1, 1) + mean
    return x * brightness.view(-1, 1, 1, 1)


def _randaugment(x: torch.Tensor, g: torch.Generator, m: float, n_ops: int) -> torch.Tensor:
    ops = ("identity", "rotate", "shear", "translate", "contrast", "brightness", "solarize",
           "posterize", "blur", "noise")
    for _ in range(n_ops):
        choice = torch.randint(len(ops), (x.shape[0],), generator=g)
        for k, op in enumerate(ops):
            sel = (choice == k).nonzero().flatten()
            if len(sel) == 0 or op == "identity":
                continue
            x[sel] = _op(x[sel], op, m, g)
    return x


def _op(x: torch.Tensor, op: str, m: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    zeros, ones = torch.zeros(b), torch.ones(b)
    if op == "rotate":
        return _affine(x, ones, sign * m * 30 * math.pi / 180, zeros, zeros)
    if op == "shear":
        return _affine(x, ones, zeros, zeros, zeros, shear=sign * m * 0.3)
    if op == "translate":
        return _affine(x, ones, zeros, sign * m * 0.45, -sign * m * 0.45 * torch.rand(b, generator=g))
    if op == "contrast":
        return _jitter(x, ones, 1 + sign * m * 0.9)
    if op == "brightness":
        return _jitter(x, 1 + sign * m * 0.9, ones)
    if op == "solarize":
        return torch.where(x >= 1 - m, 1 - x, x)
    if op == "posterize":
        levels = 2 ** max(1, round(8 - 4 * m))
        return torch.floor(x * (levels - 1) + 0.5) / (levels - 1)
    if op == "blur":
        return _blur(x, 0.3 + 1.5 * m)
    if op == "noise":
        return x + m * 0.3 * torch.randn(x.shape, generator=g)
    raise AssertionError(op)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"),
                    k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# ---------------------------------------------------------------- file datasets

def _load_image(path: Path, image_size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * s)), max(image_size, round(h * s))),
                       Image.BICUBIC)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def load_image_folder(root: str | os.PathLike, image_size: int, *,
                      classnames: Sequence[str] | None = None, name: str | None = None,
                      ) -> ImageSet:
    """Load ``root/<class>/<image>`` (resize shorter side + centre crop) into memory.

    Args:
        root: ImageFolder-style directory.
        image_size: output resolution.
        classnames: the head's classes; folder names must be among them (their indices
            become the labels and, if fewer, the class subset). Default: sorted folders.
        name: set name (default: the folder name).

    Returns:
        An :class:`ImageSet`.

    Example:
        >>> ds = load_image_folder("data/val", 224)                # doctest: +SKIP
    """
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class sub-directories")
    names = list(classnames) if classnames else folders
    index = {c: i for i, c in enumerate(names)}
    missing = [f for f in folders if f not in index]
    if missing:
        raise ValueError(f"{root}: folders {missing[:5]} are not among the class names")
    paths, labels = [], []
    for f in folders:
        for p in sorted((root / f).iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(p)
                labels.append(index[f])
    return _from_paths(name or root.name, paths, labels, names, image_size,
                       subset=sorted(index[f] for f in folders) if len(folders) < len(names) else None)


def load_csv(path: str | os.PathLike, image_size: int, classnames: Sequence[str], *,
             name: str | None = None) -> ImageSet:
    """Load a CSV of ``path,label`` rows (label: index or class name; a header row
    ``path,label`` is skipped; relative paths are relative to the CSV).

    Example:
        >>> ds = load_csv("shift.csv", 224, names)                  # doctest: +SKIP
    """
    path = Path(path)
    index = {c: i for i, c in enumerate(classnames)}
    paths, labels = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0] == "path":
                continue
            p = Path(row[0])
            paths.append(p if p.is_absolute() else path.parent / p)
            lab = row[1].strip()
            labels.append(int(lab) if lab.lstrip("-").isdigit() else index[lab])
    present = sorted(set(labels))
    return _from_paths(name or path.stem, paths, labels, list(classnames), image_size,
                       subset=present if len(present) < len(classnames) else None)


def _from_paths(name: str, paths: list[Path], labels: list[int], classnames: list[str],
                image_size: int, subset: list[int] | None) -> ImageSet:
    if not paths:
        raise ValueError(f"{name}: no images found")
    images = torch.stack([_load_image(p, image_size) for p in paths])
    return ImageSet(name, images, torch.tensor(labels, dtype=torch.long), classnames,
                    class_subset=subset, meta={"paths": [str(p) for p in paths]})


def load_dataset(spec: dict[str, Any] | str, image_size: int, classnames: Sequence[str] | None,
                 builtin: dict[str, ImageSet] | None = None) -> ImageSet:
    """Resolve a dataset spec from a config: a built-in name, an ImageFolder
    directory or a CSV file (``{"path": ..., "name": ..., "class_subset": [...]}``).

    Example:
        >>> load_dataset({"path": "val/"}, 224, names)              # doctest: +SKIP
    """
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    key = spec["path"]
    if builtin and key in builtin:
        ds = builtin[key]
    elif Path(key).is_dir():
        ds = load_image_folder(key, image_size, classnames=classnames, name=spec.get("name"))
    elif Path(key).suffix == ".csv":
        if classnames is None:
            raise ValueError(f"{key}: CSV datasets need class names")
        ds = load_csv(key, image_size, classnames, name=spec.get("name"))
    else:
        raise ValueError(f"dataset {key!r}: not a built-in set, a directory or a .csv file")
    if "name" in spec:
        ds.name = spec["name"]
    if "class_subset" in spec:
        ds.class_subset = list(spec["class_subset"])
    if "class_map" in spec:
        ds.class_map = {int(k): int(v) for k, v in spec["class_map"].items()}
    return ds
