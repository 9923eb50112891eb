"""Matching checkpoint keys to model keys: explicit prefix rewrites, a callable, or
an automatic choice of one prefix to strip and/or add (``module.``, ``visual.``,
``_orig_mod.``, ``model.``) that matches the most keys. Mismatches are reported as a
diff of missing and unexpected keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..errors import MismatchError
from .checkpoint import _preview

KeyMap = Mapping[str, str] | Callable[[str], str | None] | None
_COMMON_PREFIXES = ("module.", "_orig_mod.", "model.", "visual.", "transformer.")


def make_key_fn(key_map: KeyMap, target_names: Iterable[str],
                input_names: Iterable[str]) -> Callable[[str], str | None]:
    """A function from an input key to a target key (None: ignore the input key).

    Args:
        key_map: None (automatic), ``{old_prefix: new_prefix}`` (longest matching
            prefix wins; other keys unchanged) or a callable returning the target
            key or None.
        target_names: keys of the model being loaded.
        input_names: keys of the checkpoint.

    Returns:
        The mapping function.

    Example:
        >>> f = make_key_fn({"module.": ""}, ["w"], ["module.w"])
        >>> f("module.w")
        'w'
    """
    if callable(key_map):
        return key_map
    if key_map is not None:
        rules = sorted(key_map.items(), key=lambda kv: -len(kv[0]))

        def by_prefix(name: str) -> str | None:
            for old, new in rules:
                if name.startswith(old):
                    return new + name[len(old):]
            return name

        return by_prefix
    return _auto(set(target_names), list(input_names))


def _first_components(names: Iterable[str], limit: int = 16) -> list[str]:
    seen: dict[str, None] = {}
    for n in names:
        if "." in n:
            seen.setdefault(n.split(".", 1)[0] + ".", None)
            if len(seen) >= limit:
                break
    return list(seen)


def _auto(targets: set[str], inputs: list[str]) -> Callable[[str], str | None]:
    strips = ["", *dict.fromkeys([*_COMMON_PREFIXES, *_first_components(inputs)])]
    adds = ["", *dict.fromkeys([*_COMMON_PREFIXES, *_first_components(targets)])]
    best, best_count = ("", ""), sum(1 for n in inputs if n in targets)
    if best_count < len(targets):
        for strip in strips:
            for add in adds:
                if strip == add:
                    continue
                count = sum(1 for n in inputs
                            if n.startswith(strip) and add + n[len(strip):] in targets)
                if count > best_count:
                    best, best_count = (strip, add), count
    strip, add = best
    if not strip and not add:
        return lambda n: n
    # Keys outside the stripped prefix match nothing (strict mode lists them as unexpected).
    return lambda n: add + n[len(strip):] if n.startswith(strip) else "\0" + n


def key_diff(label: str, missing: list[str], unexpected: list[str]) -> MismatchError:
    """The error for keys that do not match, listing both sides."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} model key(s) missing from the input: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected input key(s): {_preview(unexpected)}")
    return MismatchError(f"{label}: keys do not match the model (strict=True): "
                         + "; ".join(parts) + " (pass key_map=... or strict=False)")
