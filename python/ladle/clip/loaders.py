"""``torch.utils.data.DataLoader`` construction for every dataset kind of the harness.

One place decides workers, ``pin_memory`` (when the model is on CUDA),
``prefetch_factor`` and ``persistent_workers``, and the epoch order (a seeded shuffle
split across DDP ranks: rank r takes every world-th example, equal step counts).
Evaluation streams normalised batches from disk (:class:`~.files.FileSet`, shards)
through the model's own open_clip preprocessing; the in-memory digit
:class:`~.data.ImageSet` is transformed a whole batch at a time.

Example:
    >>> from ladle.clip.data import DIGIT_NAMES, ImageSet
    >>> ds = ImageSet("x", torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.arange(5),
    ...               list(DIGIT_NAMES))
    >>> [len(y) for _, y, _ in eval_batches(ds, 2, default_cfg(8))]
    [2, 2, 1]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .transforms import default_cfg, tensor_eval_transform


@dataclass
class LoaderOptions:
    """DataLoader settings (config ``"loader"`` for evaluation; fine-tuning options
    ``workers``, ``prefetch_factor``, ``persistent_workers``)."""

    workers: int = 0
    prefetch_factor: int = 2
    persistent_workers: bool = False
    device: str = "cpu"

    @classmethod
    def of(cls, value: LoaderOptions | dict[str, Any] | None) -> LoaderOptions:
        """Options from a dict (unknown keys refused) or None (defaults)."""
        if value is None or isinstance(value, LoaderOptions):
            return value or cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown loader option(s) {unknown}; valid: {sorted(known)}")
        return cls(**value)

    def kwargs(self) -> dict[str, Any]:
        """DataLoader keyword arguments for these options."""
        kw: dict[str, Any] = {"num_workers": int(self.workers),
                              "pin_memory": torch.device(self.device).type == "cuda"}
        if self.workers > 0:
            kw.update(prefetch_factor=int(self.prefetch_factor),
                      persistent_workers=bool(self.persistent_workers))
        return kw


def epoch_order(n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1
                ) -> list[int]:
    """This rank's example order for one epoch (seeded permutation, truncated to a
    multiple of ``world`` so every rank takes the same number of steps)."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
             else torch.arange(n))
    if world > 1:
        order = order[:len(order) - len(order) % world]
    return order[rank::world].tolist()


class EpochSampler(Sampler[int]):
    """:func:`epoch_order` for the epoch set by :meth:`set_epoch` (seed = base +
    epoch), so one DataLoader with persistent workers serves every epoch."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n, shuffle=self.shuffle, seed=self.seed + self.epoch,
                                rank=self.rank, world=self.world))

    def __len__(self) -> int:
        return (self.n - (self.n % self.world if self.world > 1 else 0)) // self.world


class ImageSetDataset(Dataset):
    """Items of an in-memory :class:`~.data.ImageSet` through a per-image transform."""

    def __init__(self, data: Any, transform: Any):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(self.data.images[i]), int(self.data.labels[i]), i


def train_loader(data: Any, transform: Any, batch_size: int, sampler: EpochSampler, *,
                 options: LoaderOptions | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader of ``(augmented batch, labels, indices)`` for training."""
    ds = data.dataset(transform) if hasattr(data, "dataset") else ImageSetDataset(data,
                                                                                  transform)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      **LoaderOptions.of(options).kwargs())


def eval_batches(data: Any, batch_size: int, cfg: dict[str, Any] | None = None, *,
                 options: LoaderOptions | dict[str, Any] | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(normalised images, labels, indices)`` in dataset order, preprocessed with
    the model's open_clip config ``cfg``: in-memory sets batch-wise in this process,
    file sets and shards decoded by DataLoader workers.

    Args:
        data: an :class:`~.data.ImageSet`, :class:`~.files.FileSet` or shard set.
        batch_size: images per batch.
        cfg: the model's preprocess config (default: CLIP's at the set's size).
        options: :class:`LoaderOptions` (workers, prefetch, pinned memory).
    """
    if hasattr(data, "images"):  # in memory: one vectorised transform per batch
        transform = tensor_eval_transform(cfg or default_cfg(int(data.images.shape[-1])))
        for i in range(0, len(data), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(data)))
            yield transform(data.images[idx]), data.labels[idx], idx
        return
    from .transforms import split_eval_transform

    per_image, per_batch = split_eval_transform(cfg or default_cfg(224))
    opts = LoaderOptions.of(options)
    loader = DataLoader(data.dataset(per_image), batch_size=batch_size, shuffle=False,
                        **opts.kwargs())
    for x, y, idx in loader:
        yield per_batch(x), y, idx
