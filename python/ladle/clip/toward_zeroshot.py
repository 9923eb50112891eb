"""Fine-tuning baselines that pull the model toward the zero-shot θ0 (SPEC §1.4, §4
row 14): distillation toward the zero-shot outputs (WiSE-FT [W1] Eq. 3) and
L2-SP-style penalties λ·‖θ_enc − θ0_enc‖² (backbone) and λ_head·‖W − W_zs‖² (head).

Objective per batch, with CE the harness's loss (label smoothing, mixup) and
``w = distill_weight``::

    (1 − w)·CE + w·T²·KL(softmax(f(x; θ0)/T) ‖ softmax(f(x; θ)/T))
        + l2sp_weight·‖θ_enc − θ0_enc‖² + l2sp_head_weight·‖W − W_zs‖²

Eq. 3 mixes the two terms convexly with the cross-entropy toward the zero-shot soft
targets; KL differs from that cross-entropy only by the teacher's entropy, which has no
gradient, so training is the same and the distillation term reads 0 at θ = θ0. T = 1
is the paper's setting; the T² factor (Hinton et al.) keeps gradient magnitudes
comparable when T is raised — the SPEC does not specify a temperature.
``W`` is the head as stored (logit scale folded in, see :mod:`.zeroshot`).

One frozen copy of θ0, taken once before training, serves as both the teacher and the
L2-SP anchor; every weight at 0 (the default) takes no copy and leaves plain
fine-tuning untouched.

Example:
    >>> cfg = FinetuneConfig(distill_weight=0.5, l2sp_weight=1e-2)    # doctest: +SKIP
    >>> finetune(model, train, cfg)                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .config import FinetuneConfig
from .zeroshot import ImageClassifier


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(distill_kl(x, x))
        0.0
    """
    t = float(temperature)
    teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    student = F.log_softmax(student_logits / t, dim=1)
    return t * t * F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def l2sp_penalty(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ ‖θ − θ0‖² over ``(parameter, anchor)`` pairs; its gradient is 2(θ − θ0).

    Example:
        >>> float(l2sp_penalty([(torch.tensor([3.0, 4.0]), torch.zeros(2))]))
        25.0
    """
    terms = [(p - p0.detach()).pow(2).sum() for p, p0 in pairs]
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())


class ZeroShotAnchor:
    """The frozen θ0 and the weights of the terms that pull toward it.

    Args:
        model: the classifier about to be fine-tuned (θ0, on its training device).
        cfg: reads ``distill_weight``, ``distill_temperature``, ``l2sp_weight``,
            ``l2sp_head_weight`` and ``mode``.

    Example:
        >>> anchor = ZeroShotAnchor.from_config(model, cfg)           # doctest: +SKIP
        >>> loss = anchor.objective(ce, logits, images, model)         # doctest: +SKIP
    """

    def __init__(self, model: ImageClassifier, cfg: FinetuneConfig):
        self.distill_weight = float(cfg.distill_weight)
        self.temperature = float(cfg.distill_temperature)
        self.l2sp_weight = float(cfg.l2sp_weight)
        self.l2sp_head_weight = float(cfg.l2sp_head_weight)
        if cfg.mode == "lc":
            # LC never changes the encoder, so the snapshot shares it: only the head
            # is copied (no second backbone in memory).
            self.frozen = ImageClassifier(model.image_encoder, copy.deepcopy(model.head),
                                          model.image_size)
            self.frozen.head.weight.requires_grad_(False)
        else:
            self.frozen = copy.deepcopy(model)
            for p in self.frozen.parameters():
                p.requires_grad_(False)
        self.frozen.eval()

    @classmethod
    def from_config(cls, model: ImageClassifier, cfg: FinetuneConfig
                    ) -> ZeroShotAnchor | None:
        """The anchor, or None when every weight is 0 (plain fine-tuning)."""
        if cfg.distill_weight == 0 and cfg.l2sp_weight == 0 and cfg.l2sp_head_weight == 0:
            return None
        return cls(model, cfg)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, *, features: bool = False) -> torch.Tensor:
        """f(x; θ0) on images, or on normalised features (the LC cache)."""
        return self.frozen.head(x) if features else self.frozen(x)

    def penalty(self, model: ImageClassifier) -> torch.Tensor:
        """λ·‖θ_enc − θ0_enc‖² + λ_head·‖W − W_zs‖² over the parameters being trained
        (frozen ones are constant and skipped)."""
        total = torch.zeros((), device=model.head.weight.device)
        if self.l2sp_weight:
            pairs = [(p, p0) for p, p0 in zip(model.image_encoder.parameters(),
                                              self.frozen.image_encoder.parameters())
                     if p.requires_grad]
            total = total + self.l2sp_weight * l2sp_penalty(pairs)
        if self.l2sp_head_weight and model.head.weight.requires_grad:
            total = total + self.l2sp_head_weight * l2sp_penalty(
                [(model.head.weight, self.frozen.head.weight)])
        return total

    def objective(self, ce: torch.Tensor, logits: torch.Tensor, x: torch.Tensor,
                  model: ImageClassifier, *, features: bool = False) -> torch.Tensor:
        """The full loss from the batch's cross-entropy ``ce`` and student ``logits``
        on inputs ``x`` (images, or features when ``features``)."""
        loss = ce
        if self.distill_weight:
            kl = distill_kl(logits, self.teacher_logits(x, features=features),
                            self.temperature)
            loss = (1.0 - self.distill_weight) * ce + self.distill_weight * kl
        if self.l2sp_weight or self.l2sp_head_weight:
            loss = loss + self.penalty(model)
        return loss
