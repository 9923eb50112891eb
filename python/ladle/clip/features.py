"""The LC / linear-probe feature cache: image features extracted once, written to a
memory-mapped ``.npy`` file (``np.lib.format.open_memmap``) batch by batch, and read
back as a memory map — never held in RAM as a whole.

The file name carries a fingerprint of the image encoder's weights, the
preprocessing and the dataset (name, size, labels, file list), so a later run with the
same encoder and data reuses it and anything else extracts anew. The file is written
under a temporary name and renamed when complete.

Example:
    >>> feats = extract_features(zs_model, train, "runs/lc/features")   # doctest: +SKIP
    >>> feats.shape, type(feats)                                         # doctest: +SKIP
    ((45000, 512), <class 'numpy.memmap'>)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def fingerprint(model: Any, data: Any) -> str:
    """sha256 (16 hex digits) of the encoder's weights, preprocessing and the dataset."""
    h = hashlib.sha256()
    for name, t in model.image_encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(getattr(model, "preprocess", {}), sort_keys=True, default=str).encode())
    h.update(f"{data.name}:{len(data)}".encode())
    h.update(data.labels.numpy().tobytes())
    for p in getattr(data, "paths", []):
        h.update(p.encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(model: Any, data: Any, cache_dir: str | os.PathLike, *,
                     batch_size: int = 512, loader: Any = None) -> np.memmap:
    """Normalised image features g(x)/‖g(x)‖ of every example (no augmentation), as a
    read-only memory map of ``cache_dir/features-<name>-<fingerprint>.npy``.

    Args:
        model: an :class:`~.zeroshot.ImageClassifier` (on any device).
        data: any harness dataset (streamed through the model's preprocessing).
        cache_dir: where the ``.npy`` cache lives (created).
        batch_size: images per forward pass.
        loader: DataLoader options (:class:`~.loaders.LoaderOptions` or dict).

    Returns:
        ``np.memmap`` of shape (N, d), float32.
    """
    from .loaders import LoaderOptions, eval_batches

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in data.name)
    path = cache / f"features-{safe}-{fingerprint(model, data)}.npy"
    if not path.is_file():
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        opts = LoaderOptions.of(loader)
        opts = LoaderOptions(**{**opts.__dict__, "device": str(device)})
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
        out = None
        try:
            for x, _, idx in eval_batches(data, batch_size, model.preprocess, options=opts):
                f = model.features(x.to(device)).float().cpu().numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                    shape=(len(data), f.shape[1]))
                out[idx.numpy()] = f
            if out is None:
                raise ValueError(f"{data.name}: no images to extract features from")
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            model.train(was_training)
    return np.load(path, mmap_mode="r")
