"""Tensor-name selection by fnmatch globs (``include=``/``exclude=``), with one
normaliser so every API reads a plain string as one pattern, never as the sequence
of its characters (``include="*.weight"`` would otherwise match any name that
contains ``*``, ``.``, ``w``, ... i.e. everything)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..errors import LadleValueError


def as_patterns(value: str | Iterable[str] | None, what: str = "include") -> list[str] | None:
    """``None`` -> None, ``"glob"`` -> ``["glob"]``, an iterable of str -> a list.

    Raises LadleValueError naming ``what`` for anything else (bytes, numbers, an
    iterable holding a non-string).

    Example:
        >>> as_patterns("*.weight")
        ['*.weight']
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise LadleValueError(f"{what} must be a glob string or a list of glob strings, "
                              f"got {type(value).__name__} {value!r}")
    patterns = list(value)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise LadleValueError(f"{what} must hold glob strings, got {type(bad[0]).__name__} "
                              f"{bad[0]!r}")
    return patterns


def selected(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    """True when ``name`` matches an include glob (or there are none) and no exclude glob.
    Patterns must already be normalised by :func:`as_patterns`."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))
