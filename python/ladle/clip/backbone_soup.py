"""Backbone-only soups across datasets (SPEC §1.6 "cross-dataset soups", §4 row 23;
[MS] App E, J.3).

Models fine-tuned on different datasets share the image-encoder architecture but not
the head (different class sets). Their encoders are averaged — streamed by
:func:`ladle.uniform_soup` straight into the live encoder, with a key map that never
reads a head — and the head of the evaluation dataset is attached instead: its
zero-shot head from CLIP's text tower (:func:`cross_dataset_soup`) or any other
(:func:`attach_head`). The paper's ingredients are fine-tuned with the zero-shot head
frozen (``FinetuneConfig(freeze_head=True)``) and the zero-shot model itself is one
of them (pass θ0's checkpoint along).

Example:
    >>> model, result = cross_dataset_soup(clip, tok, ["zs.safetensors", "cifar10/",
    ...                                    "dtd/"], cifar100_names, templates)  # doctest: +SKIP
    >>> evaluate_model(model, {"cifar100": test})                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .zeroshot import ImageClassifier, build_zeroshot_classifier, make_head

ENCODER_PREFIX = "image_encoder."


def backbone_keys(prefix: str = ENCODER_PREFIX) -> Callable[[str], str | None]:
    """Key map from a checkpoint to the image encoder: ``prefix`` stripped, every
    other key (the head) ignored. ``"visual."`` reads open_clip CLIP checkpoints.

    Example:
        >>> f = backbone_keys()
        >>> f("image_encoder.conv1.weight"), f("head.weight")
        ('conv1.weight', None)
    """

    def to_encoder(name: str) -> str | None:
        return name[len(prefix):] if name.startswith(prefix) else None

    return to_encoder


def attach_head(model: ImageClassifier, weights: torch.Tensor, scale: float) -> ImageClassifier:
    """Replace ``model.head`` by the head for W (d × k, e.g. another dataset's
    zero-shot weights) with logit scale ``scale``; returns ``model``.

    Example:
        >>> attach_head(model, zeroshot_weights(clip, tok, names, templates),
        ...             logit_scale_of(clip))                      # doctest: +SKIP
    """
    head = make_head(weights, scale).to(model.head.weight.device, model.head.weight.dtype)
    model.head = head
    return model


def backbone_soup(model: ImageClassifier, ingredients: Sequence[Any], *,
                  prefix: str = ENCODER_PREFIX, evaluate: Callable[[Any], float] | None = None,
                  out: str | os.PathLike | None = None, log: Any = None, threads: int = 0,
                  memory_budget: int | str = "256MiB", overwrite: bool = False) -> Any:
    """Stream the uniform soup of the ingredients' image encoders into
    ``model.image_encoder``; ``model.head`` is left as it is (never averaged).

    Args:
        model: the classifier evaluated; its head is the evaluation dataset's.
        ingredients: checkpoints (files, directories, ``.pt``), modules or dicts
            holding ``prefix``-named encoder tensors; their heads may differ in shape.
        prefix: key prefix of the encoder in the ingredients.
        evaluate: optional ``evaluate(model) -> float`` of the souped classifier.
        out: also save the whole classifier (soup encoder + ``model.head``).
        log: JSONL results log (path or :class:`ladle.ResultsLog`).
        threads, memory_budget, overwrite: engine/output options.

    Returns:
        The :class:`ladle.SoupResult` of :func:`ladle.uniform_soup`.

    Example:
        >>> backbone_soup(model, ["ft-a.safetensors", "ft-b.safetensors"])  # doctest: +SKIP
    """
    import ladle

    # strict keys: every encoder tensor must be in every ingredient (ignored heads aside).
    result = ladle.uniform_soup(model.image_encoder, ingredients,
                                None if evaluate is None else lambda _: evaluate(model),
                                key_map=backbone_keys(prefix), strict=True, log=log,
                                threads=threads, memory_budget=memory_budget)
    result.method = "backbone-soup"
    if out is not None:
        recipe = {"ingredients": result.ingredients, "weights": result.weights,
                  "score": result.score, "head": "the evaluation dataset's (not averaged)"}
        result.out = ladle.save(model, out, overwrite=overwrite, threads=threads,
                                metadata={"ladle_method": "backbone-soup",
                                          "ladle_recipe": json.dumps(recipe)})
    return result


def cross_dataset_soup(clip: Any, tokenizer: Any, ingredients: Sequence[Any],
                       classnames: Sequence[str], templates: Sequence[str],
                       **options: Any) -> tuple[ImageClassifier, Any]:
    """The evaluation dataset's zero-shot classifier with its encoder replaced by the
    backbone soup of ``ingredients``.

    Args:
        clip, tokenizer: the open_clip model θ0 came from (text tower for the head).
        ingredients: see :func:`backbone_soup`.
        classnames, templates: the evaluation dataset's classes and prompts.
        **options: passed to :func:`backbone_soup` (``out``, ``evaluate``, ...).

    Returns:
        ``(classifier, SoupResult)``.

    Example:
        >>> model, res = cross_dataset_soup(clip, tok, paths, names, ["a photo of a {c}."])  # doctest: +SKIP
    """
    model = build_zeroshot_classifier(clip, tokenizer, classnames, templates)
    return model, backbone_soup(model, ingredients, **options)


def write_backbone_soup(ingredients: Sequence[Any], out: str | os.PathLike, *,
                        prefix: str = ENCODER_PREFIX, **options: Any) -> Any:
    """File to file: the uniform soup of the encoder tensors only (``include`` glob on
    ``prefix``), no head in ``out``; attach one later with ``ladle.load_into(model,
    [out], strict=False)`` into a classifier that has it. Options are those of
    :func:`ladle.merge`.

    Example:
        >>> write_backbone_soup(["ft-a/", "ft-b/"], "backbone.safetensors")   # doctest: +SKIP
    """
    import ladle

    options.setdefault("method", "backbone-soup")
    options.setdefault("progress", False)
    return ladle.soup(ingredients, out, include=[prefix + "*"], **options)
