"""Creating open_clip models and tokenizers by name, with ladle's own configs.

Any open_clip architecture works (``ViT-B-32``, ...); ``pretrained`` is an open_clip
tag or a local weights file (``.safetensors``, ``.pt``, ``.bin``) — nothing is ever
downloaded by ladle itself. Custom architectures are registered from JSON with
``open_clip.add_model_config``; ladle ships ``ladle-tiny-clip`` (32 px ViT, patch 8,
the standard CLIP BPE tokenizer) for the offline demo.

Example:
    >>> from ladle.clip.models import create_clip
    >>> clip, tokenizer = create_clip("ladle-tiny-clip")          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered: set[str] = set()


def register_configs(path: str | os.PathLike | None = None) -> None:
    """Register every ``*.json`` open_clip config in ``path`` (default: ladle's own).

    Example:
        >>> register_configs()                                    # doctest: +SKIP
    """
    import open_clip

    key = str(Path(path or CONFIG_DIR).resolve())
    if key not in _registered:
        open_clip.add_model_config(key)
        _registered.add(key)


def create_clip(name: str, pretrained: str | None = None, *,
                config: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """Create an open_clip model (CPU, fp32, eval mode) and its tokenizer.

    Args:
        name: an open_clip model name, or the stem of a JSON file in ``config``.
        pretrained: an open_clip pretrained tag (only when its weights are already
            cached locally), a local weights file, or None for random init.
        config: a JSON config file or a directory of them to register first.

    Returns:
        ``(clip_model, tokenizer)``.

    Example:
        >>> clip, tok = create_clip("ViT-B-32", pretrained=None)    # doctest: +SKIP
    """
    import logging

    import open_clip

    register_configs()
    if config is not None:
        cfg = Path(config)
        register_configs(cfg if cfg.is_dir() else cfg.parent)
    weights_file = pretrained is not None and Path(pretrained).is_file()
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    model = open_clip.create_model(name, pretrained=None if weights_file else pretrained)
    if weights_file:
        load_clip_weights(model, pretrained)
    model.eval()
    return model, open_clip.get_tokenizer(name)


def load_clip_weights(model: Any, path: str | os.PathLike) -> None:
    """Load a CLIP state dict from a local file into ``model`` via ladle (strict keys).

    A ``.pt`` file holding ``{"state_dict": ...}`` (open_clip training checkpoints)
    is unwrapped and the ``module.`` prefix of DDP checkpoints removed.

    Example:
        >>> load_clip_weights(clip, "tiny-clip.safetensors")       # doctest: +SKIP
    """
    import ladle

    path = Path(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        import torch

        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        model.load_state_dict(sd)
        return
    ladle.load_into(model, [path])


def n_params(module: Any) -> int:
    """Number of parameters (tied parameters counted once).

    Example:
        >>> n_params(clip.visual)                                   # doctest: +SKIP
    """
    return sum(p.numel() for p in module.parameters())
