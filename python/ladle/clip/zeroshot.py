"""Zero-shot heads (SPEC §1.1) and the image classifier used everywhere in the harness.

For each class: fill every template with the class name, encode with the text tower,
L2-normalise each caption embedding, average, re-normalise → column j of W_zs (d × k,
unit-norm columns). The logit scale is folded in: the head is ``Linear(d, k)`` with
``weight = scale · W_zsᵀ`` and no bias. The classifier normalises the image embedding
and applies the head, so its state dict has the same keys (``image_encoder.*``,
``head.weight``) for zero-shot and fine-tuned models — WiSE-FT interpolates the head
too (SPEC §1.2).

Example:
    >>> clip, tok = create_clip("ladle-tiny-clip")                    # doctest: +SKIP
    >>> W = zeroshot_weights(clip, tok, ["zero", "one"], ["a {c}."])  # doctest: +SKIP
    >>> model = ImageClassifier.from_clip(clip, W)                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def zeroshot_weights(clip: Any, tokenizer: Any, classnames: Sequence[str],
                     templates: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """W_zs ∈ R^{d×k}: prompt-ensembled, unit-norm text embeddings (before scaling).

    Args:
        clip: an open_clip model (``encode_text``).
        tokenizer: its tokenizer.
        classnames: k class names.
        templates: prompts with a ``{c}`` placeholder.
        batch_size: captions per text-encoder call.

    Returns:
        A float32 tensor of shape (d, k) whose columns have unit L2 norm.

    Example:
        >>> W = zeroshot_weights(clip, tok, ["cat", "dog"], ["a photo of a {c}."])  # doctest: +SKIP
        >>> W.norm(dim=0)                                                           # doctest: +SKIP
        tensor([1., 1.])
    """
    was_training = clip.training
    clip.eval()
    columns = []
    for name in classnames:
        captions = [t.format(c=name) for t in templates]
        embs = []
        for i in range(0, len(captions), batch_size):
            e = clip.encode_text(tokenizer(captions[i:i + batch_size])).float()
            embs.append(e / e.norm(dim=-1, keepdim=True))
        mean = torch.cat(embs).mean(dim=0)
        columns.append(mean / mean.norm())
    clip.train(was_training)
    return torch.stack(columns, dim=1)


def logit_scale_of(clip: Any) -> float:
    """CLIP's learned temperature, exp(logit_scale), as a float.

    Example:
        >>> logit_scale_of(clip)                                    # doctest: +SKIP
        100.0
    """
    return float(clip.logit_scale.detach().exp())


class ImageClassifier(nn.Module):
    """``f(x) = head(g(x) / ‖g(x)‖)``: image encoder + linear head (no bias).

    Args:
        image_encoder: maps preprocessed images (B, 3, H, W) to (B, d) embeddings.
        head: ``nn.Linear(d, k, bias=False)``.
        image_size: input resolution the encoder expects.
        preprocess: the open_clip preprocess config of the source model (size,
            mean/std, interpolation, resize mode) that evaluation applies; default
            CLIP's at ``image_size``.

    Example:
        >>> model = ImageClassifier.from_clip(clip, W)              # doctest: +SKIP
        >>> model(images).argmax(dim=1)                             # doctest: +SKIP
    """

    def __init__(self, image_encoder: nn.Module, head: nn.Linear, image_size: int = 224,
                 preprocess: dict[str, Any] | None = None):
        from .transforms import default_cfg

        super().__init__()
        self.image_encoder = image_encoder
        self.head = head
        self.image_size = image_size
        self.preprocess = dict(preprocess or default_cfg(image_size))

    @classmethod
    def from_clip(cls, clip: Any, weights: torch.Tensor, *, scale: float | None = None,
                  copy_encoder: bool = True) -> ImageClassifier:
        """Build a classifier from a CLIP model and W (d × k, unit-norm columns).

        Args:
            clip: open_clip model; its ``visual`` tower becomes the image encoder.
            weights: zero-shot weights from :func:`zeroshot_weights`.
            scale: logit scale folded into the head (default: the model's).
            copy_encoder: deep-copy the visual tower (the CLIP model stays untouched).

        Returns:
            The classifier, in eval mode.
        """
        scale = logit_scale_of(clip) if scale is None else scale
        encoder = copy.deepcopy(clip.visual) if copy_encoder else clip.visual
        size = clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        from .transforms import preprocess_cfg

        return cls(encoder, make_head(weights, scale), image_size=size,
                   preprocess=preprocess_cfg(clip)).eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings g(x)/‖g(x)‖, shape (B, d)."""
        f = self.image_encoder(x)
        f = f[0] if isinstance(f, tuple) else f
        return f / f.norm(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, k)."""
        return self.head(self.features(x))


def make_head(weights: torch.Tensor, scale: float) -> nn.Linear:
    """The classifier head for W (d × k): ``Linear(d, k, bias=False)`` holding
    ``scale · Wᵀ``.

    Example:
        >>> make_head(torch.eye(2), 10.0).weight.tolist()
        [[10.0, 0.0], [0.0, 10.0]]
    """
    d, k = weights.shape
    head = nn.Linear(d, k, bias=False)
    with torch.no_grad():
        head.weight.copy_(scale * weights.T)
    return head


def build_zeroshot_classifier(clip: Any, tokenizer: Any, classnames: Sequence[str],
                              templates: Sequence[str]) -> ImageClassifier:
    """Zero-shot classifier in one call: :func:`zeroshot_weights` + :meth:`from_clip`.

    Example:
        >>> zs = build_zeroshot_classifier(clip, tok, names, get_templates("imagenet"))  # doctest: +SKIP
    """
    return ImageClassifier.from_clip(clip, zeroshot_weights(clip, tokenizer, classnames,
                                                            templates))


def new_classifier_like(model: ImageClassifier) -> ImageClassifier:
    """A fresh copy with the same architecture (for loading other weights into).

    Example:
        >>> target = new_classifier_like(zs)                         # doctest: +SKIP
    """
    return copy.deepcopy(model)
