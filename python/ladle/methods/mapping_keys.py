"""The one check of a recipe mapping's keys (top level, models, modules, slices,
tokenizer blocks): unknown keys are errors that list what is allowed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import LadleValueError


def refuse_unknown_keys(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise naming the keys of ``data`` not in ``allowed`` (listed in the given order).

    Args:
        data: the parsed YAML mapping.
        allowed: the keys it may hold.
        where: message prefix, e.g. ``"recipe.yml: models[0]: "``.

    Example:
        >>> refuse_unknown_keys({"model": "a"}, ("model", "parameters"), "models[0]: ")
    """
    allowed = list(allowed)
    bad = sorted(set(data) - set(allowed))
    if bad:
        raise LadleValueError(f"{where}unknown key(s) {', '.join(map(repr, bad))} "
                              f"(allowed: {', '.join(allowed)})")
