"""ladle: streaming, bounded-memory model merging (WiSE-FT, model soups).

``import ladle`` never imports torch; the harness and live-model loading do so
lazily.

Example:
    >>> import ladle
    >>> ladle.interpolate("zeroshot/", "finetuned/", 0.5, "wiseft/")  # doctest: +SKIP
"""

from __future__ import annotations

from . import errors, methods
from ._core import build_info
from .checkpoint import Checkpoint, TensorInfo
from .checkpoint import open_checkpoint as open  # noqa: A001 - mirrors safetensors.safe_open
from .errors import (
    BackendError,
    CancelledError,
    FormatError,
    LadleError,
    LadleIOError,
    LadleValueError,
    MismatchError,
    NonFiniteError,
)
from .merge import MergeReport, interpolate, merge, soup

__version__ = build_info()["version"]

__all__ = [
    "BackendError", "CancelledError", "Checkpoint", "FormatError", "LadleError",
    "LadleIOError", "LadleValueError", "MergeReport", "MismatchError", "NonFiniteError",
    "TensorInfo", "build_info", "errors", "interpolate", "merge", "methods", "open", "soup",
]
