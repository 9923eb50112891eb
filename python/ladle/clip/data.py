"""Datasets for the harness: the in-memory :class:`ImageSet` (only for the built-in
digit domains), the streaming ImageFolder / CSV / tar-shard sets of :mod:`.files`,
dataset specs of the configs (class subsets, class maps), held-out splits and
preprocessing.

In-memory images are uint8 tensors (N, C, H, W); :func:`prepare` turns a batch into
the normalised float input of a model (torchvision ops, see :mod:`.transforms`).

Example:
    >>> from ladle.clip.data import heldout_split
    >>> train, heldout = heldout_split(100, 0.1, seed=0)
    >>> len(train), len(heldout)
    (90, 10)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import FileSet, csv_list, image_folder, shard_set
from .transforms import MEAN, STD, default_cfg, tensor_eval_transform

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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
    return tensor_eval_transform({**default_cfg(image_size), "mean": tuple(mean),
                                  "std": tuple(std)})(images)


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
    from .loaders import epoch_order

    order = torch.tensor(epoch_order(len(data), shuffle=shuffle, seed=seed, rank=rank,
                                     world=world), dtype=torch.long)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield data.images[idx], data.labels[idx], idx


# ---------------------------------------------------------------- file datasets

def load_image_folder(root: str | os.PathLike, image_size: int | None = None, *,
                      classnames: Sequence[str] | None = None, name: str | None = None,
                      ) -> FileSet:
    """An ImageFolder directory as a streaming :class:`~.files.FileSet` (images are
    decoded per batch by the loader, at the model's resolution; ``image_size`` is
    accepted for compatibility and unused).

    Example:
        >>> ds = load_image_folder("data/val")                    # doctest: +SKIP
    """
    return image_folder(root, classnames=classnames, name=name)


def load_csv(path: str | os.PathLike, image_size: int | None = None,
             classnames: Sequence[str] = (), *, name: str | None = None) -> FileSet:
    """A CSV of ``path,label`` rows as a streaming :class:`~.files.FileSet`.

    Example:
        >>> ds = load_csv("shift.csv", 224, names)                  # doctest: +SKIP
    """
    return csv_list(path, classnames, name=name)


def load_dataset(spec: dict[str, Any] | str, image_size: int | None,
                 classnames: Sequence[str] | None,
                 builtin: dict[str, ImageSet] | None = None) -> Any:
    """Resolve a dataset spec from a config: a built-in name (in memory), an
    ImageFolder directory, a CSV file or WebDataset ``.tar`` shards (streamed).

    Spec keys: ``path``, ``name``, ``class_subset`` (a list of head class indices, a
    JSON/text file of them, or ``imagenet-r`` / ``imagenet-a`` for the 200-class
    masks) and ``class_map`` (a dict head class -> dataset class, or a JSON file of
    it; ObjectNet style).

    Example:
        >>> load_dataset({"path": "val/"}, 224, names)              # doctest: +SKIP
    """
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    key = spec["path"]
    if builtin and key in builtin:
        ds = builtin[key]
    elif Path(key).is_dir():
        ds = image_folder(key, classnames=classnames, name=spec.get("name"))
    elif Path(key).suffix == ".csv":
        if classnames is None:
            raise ValueError(f"{key}: CSV datasets need class names")
        ds = csv_list(key, classnames, name=spec.get("name"))
    elif str(key).endswith(".tar") or str(key).endswith("}"):
        if classnames is None:
            raise ValueError(f"{key}: tar shards need class names")
        ds = shard_set(key, classnames, name=spec.get("name"))
    else:
        raise ValueError(f"dataset {key!r}: not a built-in set, a directory, a .csv file "
                         "or .tar shards")
    if "name" in spec:
        ds.name = spec["name"]
    if "class_subset" in spec:
        ds.class_subset = class_subset(spec["class_subset"])
    if "class_map" in spec:
        ds.class_map = class_map(spec["class_map"])
    return ds


SUBSET_DIR = Path(__file__).parent / "class_subsets"


def class_subset(value: Sequence[int] | str | os.PathLike) -> list[int]:
    """Head class indices from a list, a bundled name (``imagenet-r``, ``imagenet-a``:
    the 200 ImageNet-1k classes of each set) or a file (JSON list, or one index per line).

    Example:
        >>> len(class_subset("imagenet-r")), class_subset([3, 1])
        (200, [3, 1])
    """
    if not isinstance(value, (str, os.PathLike)):
        return [int(v) for v in value]
    bundled = SUBSET_DIR / f"{value}.json"
    path = bundled if bundled.is_file() else Path(value)
    if not path.is_file():
        raise ValueError(f"class_subset {str(value)!r}: not a file and not one of "
                         f"{sorted(p.stem for p in SUBSET_DIR.glob('*.json'))}")
    text = path.read_text()
    items = json.loads(text) if path.suffix == ".json" else text.split()
    return [int(v) for v in (items["indices"] if isinstance(items, dict) else items)]


def class_map(value: dict[Any, Any] | str | os.PathLike) -> dict[int, int]:
    """Head class -> dataset class, from a dict or a JSON file of one (ObjectNet style:
    several ImageNet classes map to one ObjectNet class; predictions are pooled).

    Example:
        >>> class_map({"0": 1, "5": 1})
        {0: 1, 5: 1}
    """
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"class_map {str(value)!r}: not a file")
        value = json.loads(path.read_text())
    return {int(k): int(v) for k, v in dict(value).items()}
