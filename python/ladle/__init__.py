"""ladle: streaming, bounded-memory model merging (WiSE-FT, model soups).

``import ladle`` never imports torch; the harness and live-model loading do so
lazily.

Example:
    >>> import ladle
    >>> ladle.interpolate("zeroshot/", "finetuned/", 0.5, "wiseft/")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._core import build_info

# Every export below loads with its module on first use, so that `import ladle` (and
# the `ladle` CLI, which imports only what its command needs) stays quick.
_EXPORTS: dict[str, tuple[str, str]] = {}
for _module, _names in {
    ".errors": ("BackendError", "CancelledError", "FormatError", "LadleError", "LadleIOError",
                "LadleValueError", "MismatchError", "NonFiniteError"),
    ".engine.cuda": ("cuda_available", "cuda_info"),
    ".engine.live": ("Loader",),
    ".engine.load": ("load_into",),
    ".engine.writer": ("save",),
    ".formats.checkpoint": ("Checkpoint", "TensorInfo"),
    ".methods.lora": ("LoraReport", "extract_lora"),
    ".methods.merge": ("MergeReport", "interpolate", "merge", "soup"),
    ".soups.ensembles": ("EnsembleResult", "greedy_ensemble", "logit_ensemble"),
    ".soups.learned": ("LearnedSoup", "LearnedSoupResult", "learned_soup"),
    ".soups.results": ("ResultsLog",),
    ".soups.selection": ("best_id_without_ood_loss", "best_on_heldout",
                         "best_ood_without_id_loss", "fixed_alpha"),
    ".soups.soups": ("SoupResult", "greedy_soup", "uniform_soup"),
    ".soups.wiseft": ("SweepPoint", "wiseft_sweep"),
}.items():
    _EXPORTS.update({name: (_module, name) for name in _names})
_EXPORTS["open"] = (".formats.checkpoint", "open_checkpoint")
# Subpackages and modules reached as attributes (`ladle.methods.merge_models`).
_SUBMODULES = ("analysis", "errors", "methods")

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from . import errors, methods
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
    """Loads an export's module (or a subpackage) on first use."""
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'ladle' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
