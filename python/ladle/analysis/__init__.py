"""The papers' analysis toolkit (SPEC §1.4–1.6): prediction-space diversity,
linear mode connectivity, calibration and significance, weight-space geometry
streamed through the engine (angles, loss planes), the soup-vs-ensemble estimate
and cheap baselines.

Submodules import only numpy at import time; torch and matplotlib are imported by
the functions that need them. Names are loaded on first use.

Example:
    >>> from ladle import analysis
    >>> analysis.linear_cka([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    1.0
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "baselines": ["ema_update", "ema_weights", "output_ensemble", "random_interpolation",
                  "softmax_ensemble", "wiseft_soup"],
    "calibration": ["calibration_report", "expected_calibration_error", "fit_temperature",
                    "nll", "reliability_bins"],
    "connectivity": ["beats_endpoints", "connectivity_report", "lmc_check"],
    "diversity": ["cka_complement", "cohen_kappa_complement", "confidence_margin",
                  "diversity_report", "linear_cka", "mean_kl", "override_analysis",
                  "prediction_diversity"],
    "geometry": ["GAIN_PATTERNS", "Gram", "angle", "interpolation_advantage",
                 "pairwise_interpolation_advantage", "streamed_gram"],
    "plane": ["Plane", "PlaneGrid", "evaluate_plane", "plane_basis", "plot_plane"],
    "significance": ["mcnemar_exact", "permutation_test"],
    "soup_vs_ensemble": ["module_predict", "soup_ensemble_gap"],
}
_OWNER = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = [
    "GAIN_PATTERNS", "Gram", "Plane", "PlaneGrid", "angle", "beats_endpoints",
    "calibration_report", "cka_complement", "cohen_kappa_complement", "confidence_margin",
    "connectivity_report", "diversity_report", "ema_update", "ema_weights", "evaluate_plane",
    "expected_calibration_error", "fit_temperature", "interpolation_advantage", "linear_cka",
    "lmc_check", "mcnemar_exact", "mean_kl", "module_predict", "nll", "output_ensemble",
    "override_analysis", "pairwise_interpolation_advantage", "permutation_test", "plane_basis", "plot_plane",
    "prediction_diversity", "random_interpolation", "reliability_bins", "softmax_ensemble",
    "soup_ensemble_gap", "streamed_gram", "wiseft_soup",
]


def __getattr__(name: str) -> Any:
    if name in _OWNER:
        return getattr(importlib.import_module(f".{_OWNER[name]}", __name__), name)
    raise AttributeError(f"module 'ladle.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
