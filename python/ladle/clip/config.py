"""Fine-tuning configurations, named presets (JSON files in ``presets/``) and
hyperparameter sweeps (grid, the Model-soups random search, explicit lists).

Example:
    >>> cfg = load_preset("wiseft-e2e")
    >>> cfg["finetune"]["lr"], cfg["finetune"]["warmup_steps"]
    (2e-05, 500)
    >>> len(sweep_configs(load_preset("soups-vit-b32")["sweep"]))
    48
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class FinetuneConfig:
    """Hyperparameters of one fine-tuning run (SPEC §1.2, §2.4).

    Attributes:
        mode: ``e2e`` (all weights, head from the zero-shot head), ``lc`` (frozen
            encoder, cached features, head only), ``lpft`` (LC stage then E2E) or
            ``flyp`` (both towers, contrastive loss on class-name prompts, head
            rebuilt from the text tower; :mod:`.flyp`, run by the WiSE-FT pipeline).
        epochs, batch_size: global batch (split across DDP ranks).
        lr, weight_decay, betas, eps: AdamW (decay on ≥ 2-D tensors only).
        warmup_steps: linear warm-up, then cosine decay to 0.
        grad_clip: global-norm clipping (0: off).
        label_smoothing: cross-entropy smoothing.
        mixup, cutmix: torchvision ``MixUp`` / ``CutMix`` alpha (0: off; one of the
            two per batch when both are on). LC mixes cached features instead.
        aug, aug_magnitude, aug_n_ops, hflip: torchvision augmentation, see
            :func:`ladle.clip.transforms.train_transform` (``none``, ``minimal``,
            ``medium``, ``strong`` = RandAugment, ``autoaugment``).
        seed: initialisation of data order, augmentation and mixup draws.
        ema: EMA decay of the weights (None: off); checkpoints then hold the EMA.
        swa_start: SWA (E2E): the final model is the uniform average of the iterates
            at the end of epochs swa_start..epochs (None: off); per-epoch checkpoints
            hold the iterates, ``swa.safetensors`` the average.
        distill_weight, distill_temperature: distillation toward the zero-shot model
            ([W1] Eq. 3): loss = (1 − w)·CE + w·T²·KL(zero-shot ‖ student) at
            temperature T (0: off); see :mod:`ladle.clip.toward_zeroshot`.
        l2sp_weight, l2sp_head_weight: L2-SP-style pull toward θ0, λ·‖θ_enc − θ0_enc‖²
            on the image encoder and λ_head·‖W − W_zs‖² on the head (0: off; set
            both for the E2E ‖θ − θ0‖² of [W2] Fig. 3).
        freeze_head: E2E with the zero-shot head kept fixed, so all task knowledge
            lands in the backbone (cross-dataset soups, [MS] App E).
        lp_epochs, lp_lr: the linear-probe stage of ``lpft``.
        max_steps: stop after this many steps (None: all epochs).
        accum_steps: gradient accumulation: each optimizer step sums the gradients
            of this many micro-batches (batch_size / world / accum_steps images each),
            weighted so the step equals one step on the whole batch.
        workers, prefetch_factor, persistent_workers: DataLoader options (pinned
            memory is used when ``device`` is CUDA).
        autocast: ``bf16`` or ``fp16`` mixed precision on CUDA (None: fp32; fp16 uses
            loss scaling); ignored on CPU.
        channels_last: NHWC model and batches (CUDA convolutions).
        feature_cache: directory of the LC feature cache (default: ``features/``
            next to the checkpoints, else a temporary directory).
        save_every_epoch, eval_every_epoch: per-epoch checkpoints / evaluations.
        device: ``cpu`` or ``cuda``.
        name: run name (checkpoint directory).
    """

    mode: str = "e2e"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    aug: str = "minimal"
    aug_magnitude: float = 15.0
    aug_n_ops: int = 2
    hflip: bool = False
    seed: int = 0
    ema: float | None = None
    swa_start: int | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    l2sp_weight: float = 0.0
    l2sp_head_weight: float = 0.0
    freeze_head: bool = False
    lp_epochs: int = 0
    lp_lr: float = 1e-3
    max_steps: int | None = None
    accum_steps: int = 1
    workers: int = 0
    prefetch_factor: int = 2
    persistent_workers: bool = False
    autocast: str | None = None
    channels_last: bool = False
    feature_cache: str | None = None
    save_every_epoch: bool = True
    eval_every_epoch: bool = True
    device: str = "cpu"
    name: str = "run"

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must lie in [0, 1] (the α of W1 Eq. 3), got "
                             f"{self.distill_weight}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.l2sp_weight < 0 or self.l2sp_head_weight < 0:
            raise ValueError(f"l2sp_weight and l2sp_head_weight must be >= 0, got "
                             f"{self.l2sp_weight} and {self.l2sp_head_weight}")
        if self.swa_start is not None:
            if self.mode != "e2e" or self.ema:
                raise ValueError("swa_start applies to mode e2e without ema")
            if not 1 <= self.swa_start <= self.epochs:
                raise ValueError(f"swa_start must lie in [1, epochs={self.epochs}], got "
                                 f"{self.swa_start}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        from .precision import check_autocast
        from .transforms import AUG_LEVELS

        check_autocast(self.autocast)
        if self.aug not in AUG_LEVELS:
            raise ValueError(f"unknown augmentation level {self.aug!r} ({'|'.join(AUG_LEVELS)})")
        if self.freeze_head and self.mode != "e2e":
            raise ValueError(f"freeze_head applies to mode e2e (mode {self.mode!r} trains "
                             f"the head)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build from a dict, rejecting unknown keys (with the list of valid ones)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning option(s) {unknown}; valid: {sorted(known)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        cfg = cls(**d)
        if cfg.mode not in ("e2e", "lc", "lpft", "flyp"):
            raise ValueError(f"mode must be e2e, lc, lpft or flyp, got {cfg.mode!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    def with_(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


def preset_names() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def override_config(cfg: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as JSON, else kept as text)."""
    for item in items or []:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A preset by name (``wiseft-e2e``, ``wiseft-lc``, ``soups-vit-b32``, ``demo``) or
    a JSON file; a file may ``"extends"`` a preset and override keys (one level deep).

    Example:
        >>> load_preset("demo")["model"]["name"]
        'ladle-tiny-clip'
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown preset {str(name_or_path)!r}: not a file and not one of "
                             f"{preset_names()}")
    cfg = json.loads(path.read_text())
    base = cfg.pop("extends", None)
    if base:
        merged = load_preset(base)
        for k, v in cfg.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(
                merged.get(k), dict) else v
        cfg = merged
    return cfg


def sweep_configs(sweep: dict[str, Any], base: FinetuneConfig | dict | None = None
                  ) -> list[FinetuneConfig]:
    """Expand a sweep spec into fine-tuning configs.

    Kinds: ``{"kind": "grid", "grid": {key: [values]}}`` (cartesian product, keys in
    order); ``{"kind": "random", "n": 72, "seed": 0}`` (the Model-soups random
    search, SPEC §2.4: lr 10^−U[4,6], wd 10^−U[0.2,4], label smoothing 0 w.p. ½
    else U[0,0.25], epochs U{4..16}, mixup 0 w.p. ½ else U[0,0.9], minimal aug w.p.
    ⅓ else RandAugment M~U[0,20], N~U{0,1,2}); ``{"kind": "list", "runs": [{...}]}``.
    ``"scale_epochs"`` multiplies random-search epochs (tiny presets).

    Example:
        >>> len(sweep_configs({"kind": "grid", "grid": {"lr": [1e-5, 2e-5], "seed": [0, 1]}}))
        4
    """
    base = base if isinstance(base, FinetuneConfig) else FinetuneConfig.from_dict(base or {})
    kind = sweep.get("kind", "grid")
    runs: list[dict[str, Any]] = []
    if kind == "grid":
        grid = sweep["grid"]
        for values in itertools.product(*grid.values()):
            runs.append(dict(zip(grid.keys(), values)))
    elif kind == "random":
        rng = np.random.Generator(np.random.PCG64(sweep.get("seed", 0)))
        scale = float(sweep.get("scale_epochs", 1.0))
        lr_range = sweep.get("lr_exponent", [4, 6])
        for _ in range(int(sweep.get("n", 72))):
            run = {"lr": 10 ** -rng.uniform(*lr_range),
                   "weight_decay": 10 ** -rng.uniform(0.2, 4),
                   "label_smoothing": 0.0 if rng.random() < 0.5 else rng.uniform(0, 0.25),
                   "epochs": max(1, round(int(rng.integers(4, 17)) * scale)),
                   "mixup": 0.0 if rng.random() < 0.5 else rng.uniform(0, 0.9)}
            if rng.random() < 1 / 3:
                run["aug"] = "minimal"
            else:
                run.update(aug="strong", aug_magnitude=rng.uniform(0, 20),
                           aug_n_ops=int(rng.integers(0, 3)))
            run["seed"] = int(rng.integers(2**31))
            runs.append(run)
    elif kind == "list":
        runs = [dict(r) for r in sweep["runs"]]
    else:
        raise ValueError(f"unknown sweep kind {kind!r} (grid|random|list)")
    out = []
    for i, run in enumerate(runs):
        cfg = FinetuneConfig.from_dict({**base.to_dict(), **run})
        label = "-".join(f"{k}={_short(v)}" for k, v in run.items() if k != "name")
        out.append(cfg.with_(name=run.get("name", f"run{i:03d}-{label}"[:80])))
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v and not math.isclose(v, round(v)) else str(v)
    return str(v)
