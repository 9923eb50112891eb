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
from .engine.cuda import cuda_available, cuda_info
from .engine.live import Loader
from .engine.load import load_into
from .engine.writer import save
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
from .formats.checkpoint import Checkpoint, TensorInfo
from .formats.checkpoint import open_checkpoint as open
from .methods.lora import LoraReport, extract_lora
from .methods.merge import MergeReport, interpolate, merge, soup
from .soups.ensembles import EnsembleResult, greedy_ensemble, logit_ensemble
from .soups.learned import LearnedSoup, LearnedSoupResult, learned_soup
from .soups.results import ResultsLog
from .soups.selection import (
    best_id_without_ood_loss,
    best_on_heldout,
    best_ood_without_id_loss,
    fixed_alpha,
)
from .soups.soups import SoupResult, greedy_soup, uniform_soup
from .soups.wiseft import SweepPoint, wiseft_sweep

__version__ = build_info()["version"]

__all__ = [
    "BackendError", "CancelledError", "Checkpoint", "FormatError", "LadleError",
    "LadleIOError", "LadleValueError", "MergeReport", "MismatchError", "NonFiniteError",
    "TensorInfo", "build_info", "cuda_available", "cuda_info", "errors", "interpolate", "merge",
    "methods", "open", "soup",
]
__all__ += ["LoraReport", "extract_lora"]
# live models and soups
__all__ += [
    "EnsembleResult", "LearnedSoup", "LearnedSoupResult", "Loader", "ResultsLog",
    "SoupResult", "SweepPoint", "best_id_without_ood_loss", "best_on_heldout",
    "best_ood_without_id_loss", "fixed_alpha", "greedy_ensemble", "greedy_soup",
    "learned_soup", "load_into", "logit_ensemble", "save", "uniform_soup", "wiseft_sweep",
]


def __getattr__(name: str):
    """``ladle.analysis`` loads on first use (numpy only; torch stays unimported)."""
    if name == "analysis":
        import importlib

        return importlib.import_module(".analysis", __name__)
    raise AttributeError(f"module 'ladle' has no attribute {name!r}")
