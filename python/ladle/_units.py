"""Parsing of human byte sizes such as ``5GB`` or ``256MiB``."""

from __future__ import annotations

import re

from .errors import LadleValueError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}


def parse_size(value: int | str) -> int:
    """Return a byte count from an int or a string like ``"5GB"``/``"256MiB"``.

    Decimal units (KB, MB, GB) are powers of 10 as in Hugging Face's
    ``max_shard_size``; binary units (KiB, MiB, GiB) are powers of 2.

    Example:
        >>> parse_size("256MiB")
        268435456
    """
    if isinstance(value, int):
        if value < 0:
            raise LadleValueError(f"size must be non-negative, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise LadleValueError(f"cannot parse size {value!r} (examples: 5GB, 256MiB, 1048576)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n_bytes: float) -> str:
    """Human-readable binary size, e.g. ``1.50 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"
