"""The CLIP harness: zero-shot heads, fine-tuning, evaluation under distribution
shift, WiSE-FT and model-soup pipelines, on open_clip models (SPEC §1–2).

Importing ``ladle.clip`` is cheap; torch, torchvision and open_clip are imported by
the submodules that need them (``pip install ladle[harness]``).

Modules: ``templates`` (prompt sets), ``models`` (open_clip creation, configs),
``zeroshot`` (heads, :class:`ImageClassifier`), ``data`` (datasets, splits,
augmentation), ``digits`` (built-in offline domains), ``pretrain`` (tiny contrastive
CLIP), ``finetune`` (E2E / LC / LP-FT), ``toward_zeroshot`` (distillation and L2-SP
baselines), ``evaluate`` (accuracy, subsets, intervals, output ensembles),
``robustness`` (effective robustness), ``plots``, ``wiseft`` and ``soups``
(pipelines), ``backbone_soup`` (cross-dataset soups), ``config`` (presets), ``cli``
(``ladle clip ...``).

Example:
    >>> from ladle.clip import wiseft                          # doctest: +SKIP
"""

from __future__ import annotations
