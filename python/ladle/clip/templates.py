"""Prompt templates for zero-shot heads (SPEC §1.1): the 80 CLIP ImageNet prompts,
simple sets, a digit set for the built-in demo, and user files (one ``{c}`` template
per line, or a JSON list).

Example:
    >>> from ladle.clip.templates import get_templates
    >>> len(get_templates("imagenet"))
    80
    >>> get_templates("simple")[0].format(c="dog")
    'a photo of a dog.'
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGENET_TEMPLATES = (
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.",
    "a photo of the hard to see {c}.", "a low resolution photo of the {c}.",
    "a rendering of a {c}.", "graffiti of a {c}.", "a bad photo of the {c}.",
    "a cropped photo of the {c}.", "a tattoo of a {c}.", "the embroidered {c}.",
    "a photo of a hard to see {c}.", "a bright photo of a {c}.", "a photo of a clean {c}.",
    "a photo of a dirty {c}.", "a dark photo of the {c}.", "a drawing of a {c}.",
    "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.",
    "a close-up photo of a {c}.", "a black and white photo of the {c}.",
    "a painting of the {c}.", "a painting of a {c}.", "a pixelated photo of the {c}.",
    "a sculpture of the {c}.", "a bright photo of the {c}.", "a cropped photo of a {c}.",
    "a plastic {c}.", "a photo of the dirty {c}.", "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.", "a photo of the {c}.", "a good photo of the {c}.",
    "a rendering of the {c}.", "a {c} in a video game.", "a photo of one {c}.",
    "a doodle of a {c}.", "a close-up photo of the {c}.", "a photo of a {c}.",
    "the origami {c}.", "the {c} in a video game.", "a sketch of a {c}.",
    "a doodle of the {c}.", "a origami {c}.", "a low resolution photo of a {c}.",
    "the toy {c}.", "a rendition of the {c}.", "a photo of the clean {c}.",
    "a photo of a large {c}.", "a rendition of a {c}.", "a photo of a nice {c}.",
    "a photo of a weird {c}.", "a blurry photo of a {c}.", "a cartoon {c}.", "art of a {c}.",
    "a sketch of the {c}.", "a embroidered {c}.", "a pixelated photo of a {c}.",
    "itap of the {c}.", "a jpeg corrupted photo of the {c}.", "a good photo of a {c}.",
    "a plushie {c}.", "a photo of the nice {c}.", "a photo of the small {c}.",
    "a photo of the weird {c}.", "the cartoon {c}.", "art of the {c}.",
    "a drawing of the {c}.", "a photo of the large {c}.", "a black and white photo of a {c}.",
    "the plushie {c}.", "a dark photo of a {c}.", "itap of a {c}.", "graffiti of the {c}.",
    "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.", "a photo of a small {c}.",
    "a tattoo of the {c}.",
)

SIMPLE_TEMPLATES = ("a photo of a {c}.",)
SIMPLE_TEMPLATES_7 = (
    "itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.", "a photo of the large {c}.",
    "a {c} in a video game.", "art of the {c}.", "a photo of the small {c}.",
)
FOOD_TEMPLATES = ("a photo of {c}, a type of food.",)
DIGIT_TEMPLATES = (
    "a photo of the number {c}.", "the digit {c}.", "an image of the number {c}.",
    "a picture of a {c}.",
)

TEMPLATE_SETS = {
    "imagenet": IMAGENET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "simple7": SIMPLE_TEMPLATES_7,
    "food": FOOD_TEMPLATES,
    "digits": DIGIT_TEMPLATES,
}


def get_templates(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Resolve a template set by name, file path or explicit list.

    Args:
        spec: a name in :data:`TEMPLATE_SETS`, a ``.txt`` file (one template per
            line, ``#`` comments), a ``.json`` file holding a list, or a list.

    Returns:
        The templates, each containing ``{c}`` exactly once.

    Example:
        >>> get_templates(["{c}!"])
        ['{c}!']
    """
    if isinstance(spec, (list, tuple)):
        templates = list(spec)
    elif spec in TEMPLATE_SETS:
        templates = list(TEMPLATE_SETS[spec])
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"unknown template set {spec!r}: not one of "
                             f"{sorted(TEMPLATE_SETS)} and not a file")
        text = path.read_text()
        if path.suffix == ".json":
            templates = list(json.loads(text))
        else:
            templates = [ln.strip() for ln in text.splitlines()
                         if ln.strip() and not ln.lstrip().startswith("#")]
    bad = [t for t in templates if t.count("{c}") != 1]
    if bad or not templates:
        raise ValueError(f"templates must each contain '{{c}}' once; bad: {bad[:3]}")
    return templates
