"""The Hugging Face cache layout rule shared by checkpoint (which shard links
may be followed) and path_safety (which copied files may be read). Its own
module so that neither imports the other for it."""

from __future__ import annotations

import os
from pathlib import Path


def hf_cache_root(directory: Path) -> Path:
    """Where links of files in ``directory`` may point: the directory itself, or
    for a Hugging Face cache snapshot (``models--org--name/snapshots/<rev>``)
    the model's cache root ``models--org--name`` (its files link to ``../../blobs``)."""
    real = Path(os.path.realpath(directory))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real
