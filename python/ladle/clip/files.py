"""Datasets that stay on disk: torchvision ``ImageFolder`` directories, CSV lists of
``path,label`` rows and (when the ``webdataset`` package is installed) tar shards.

Only the file list and the integer labels are held in memory; every image is opened
and decoded by a ``DataLoader`` worker when its batch is drawn, so memory does not
grow with the number of images.

Example:
    >>> fs = image_folder("data/val", classnames=names)              # doctest: +SKIP
    >>> len(fs), fs.dataset(transform)[0][0].shape                   # doctest: +SKIP
    (50000, torch.Size([3, 224, 224]))
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset


@dataclass
class FileSet:
    """Image files, their labels (indices into the head's classes) and the head's
    class names; the same evaluation attributes as :class:`~ladle.clip.data.ImageSet`.

    Attributes:
        name: shown in logs and reports.
        paths: one file per example.
        labels: int64 tensor (N,).
        classnames: the head's class names.
        class_subset: evaluate with logits masked to these head classes (IN-R/IN-A).
        class_map: head class -> dataset class, predictions pooled (ObjectNet).
    """

    name: str
    paths: list[str]
    labels: torch.Tensor
    classnames: list[str]
    class_subset: list[int] | None = None
    class_map: dict[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int] | torch.Tensor, name: str | None = None) -> FileSet:
        """A new set holding the examples at ``index`` (same classes and masks)."""
        pick = torch.as_tensor(index, dtype=torch.long).tolist()
        return FileSet(name or self.name, [self.paths[i] for i in pick], self.labels[pick],
                       list(self.classnames), self.class_subset, self.class_map,
                       dict(self.meta))

    def dataset(self, transform: Callable[[Any], torch.Tensor]) -> FileDataset:
        """A map-style torch dataset yielding ``(transform(image), label, index)``."""
        return FileDataset(self.paths, self.labels, transform)


class FileDataset(Dataset):
    """Opens and decodes one image per item (PIL, RGB) and applies ``transform``."""

    def __init__(self, paths: list[str], labels: torch.Tensor,
                 transform: Callable[[Any], torch.Tensor]):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i]), i


def image_folder(root: str | os.PathLike, *, classnames: Sequence[str] | None = None,
                 name: str | None = None) -> FileSet:
    """``root/<class>/<image>`` listed by torchvision's ``ImageFolder`` (nothing decoded).

    Args:
        root: ImageFolder-style directory.
        classnames: the head's classes; folder names must be among them (their indices
            become the labels and, if fewer, the class subset). Default: sorted folders.
        name: set name (default: the folder name).

    Returns:
        A :class:`FileSet`.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    try:
        folder = ImageFolder(str(root), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as e:
        raise ValueError(f"{root}: not an ImageFolder directory ({e})") from None
    names = list(classnames) if classnames else list(folder.classes)
    index = {c: i for i, c in enumerate(names)}
    missing = [f for f in folder.classes if f not in index]
    if missing:
        raise ValueError(f"{root}: folders {missing[:5]} are not among the class names")
    to_head = [index[c] for c in folder.classes]
    labels = torch.tensor([to_head[y] for _, y in folder.samples], dtype=torch.long)
    present = sorted(set(to_head))
    return FileSet(name or root.name, [p for p, _ in folder.samples], labels, names,
                   class_subset=present if len(present) < len(names) else None)


def csv_list(path: str | os.PathLike, classnames: Sequence[str], *,
             name: str | None = None) -> FileSet:
    """A CSV of ``path,label`` rows (label: index or class name; a header row
    ``path,label`` is skipped; relative paths are relative to the CSV)."""
    path = Path(path)
    index = {c: i for i, c in enumerate(classnames)}
    paths, labels = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row or row[0] == "path":
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line}: expected 'path,label', got {row}")
            p = Path(row[0])
            paths.append(str(p if p.is_absolute() else path.parent / p))
            lab = row[1].strip()
            if lab.lstrip("-").isdigit():
                labels.append(int(lab))
            elif lab in index:
                labels.append(index[lab])
            else:
                raise ValueError(f"{path}:{line}: label {lab!r} is not a class name")
    if not paths:
        raise ValueError(f"{path}: no images listed")
    present = sorted(set(labels))
    return FileSet(name or path.stem, paths, torch.tensor(labels, dtype=torch.long),
                   list(classnames), class_subset=present if len(present) < len(classnames)
                   else None)


def webdataset_available() -> bool:
    """Whether the optional ``webdataset`` package is importable."""
    return importlib.util.find_spec("webdataset") is not None


@dataclass
class ShardSet:
    """WebDataset tar shards (``<key>.jpg|png`` + ``<key>.cls``), streamed in order.

    The labels are read from the shards while evaluating (``labels`` is filled by
    the first pass), so nothing is listed up front.
    """

    name: str
    urls: list[str]
    classnames: list[str]
    class_subset: list[int] | None = None
    class_map: dict[int, int] | None = None
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        if self.labels is None:
            raise ValueError(f"{self.name}: the size of a shard set is known after one pass")
        return int(self.labels.shape[0])

    def dataset(self, transform: Callable[[Any], torch.Tensor]) -> IterableDataset:
        """``(transform(image), label, index)`` per sample, shards split over workers."""
        import webdataset as wds

        return (wds.WebDataset(self.urls, shardshuffle=False, nodesplitter=wds.split_by_node)
                .decode("pil").to_tuple("jpg;jpeg;png", "cls")
                .map(lambda s: (transform(s[0].convert("RGB")), int(s[1]), -1)))


def shard_set(urls: str | Sequence[str], classnames: Sequence[str], *,
              name: str | None = None) -> ShardSet:
    """WebDataset shards (a brace pattern or a list of ``.tar`` files); needs the
    optional ``webdataset`` package."""
    if not webdataset_available():
        raise ValueError(f"{urls}: tar shards need the optional 'webdataset' package "
                         "(pip install webdataset); it is not installed")
    listed = [urls] if isinstance(urls, str) else list(urls)
    return ShardSet(name or Path(listed[0]).stem, listed, list(classnames))
