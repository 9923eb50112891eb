"""Parsing and range checks of the numeric options every entry point shares:
byte sizes such as ``5GB`` or ``256MiB`` (``--max-shard-size``,
``--memory-budget``) and thread counts (``--threads``). The CLI and the Python
API both go through these functions, so a bad value is refused the same way,
with one :class:`~ladle.errors.LadleValueError`, before any file is touched.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ..errors import LadleValueError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15, "eb": 10**18,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50, "eib": 2**60,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50,
}
# Sizes beyond this are typos, not budgets (and would overflow the C++ uint64 /
# off_t arithmetic downstream).
MAX_SIZE = 2**60
MAX_THREADS = 1024
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str, what: str = "size", minimum: int = 0) -> int:
    """Return a byte count from an int or a string like ``"5GB"``/``"256MiB"``.

    Decimal units (KB, MB, GB) are powers of 10 as in Hugging Face's
    ``max_shard_size``; binary units (KiB, MiB, GiB) are powers of 2. A
    fractional count is rounded down to whole bytes (exactly, no float error).

    Args:
        value: the size.
        what: the option's name for error messages, e.g. ``"memory_budget"``.
        minimum: smallest allowed value (1 where zero is meaningless).

    Raises:
        LadleValueError: unparsable, negative, below ``minimum`` or above 1 EiB.

    Example:
        >>> parse_size("256MiB")
        268435456
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LadleValueError(f"{what} must be a byte count or a string like '256MiB', "
                              f"got {value!r}")
    if isinstance(value, int):
        n_bytes = value
    else:
        match = _SIZE.fullmatch(value)
        if not match or match.group(2).lower() not in _UNITS:
            raise LadleValueError(f"cannot parse size {value!r} for {what} "
                                  f"(examples: 5GB, 256MiB, 1048576)")
        n_bytes = int(Fraction(match.group(1)) * _UNITS[match.group(2).lower()])
    if n_bytes < minimum:
        raise LadleValueError(f"{what} must be at least {minimum} byte(s), got {value!r}")
    if n_bytes > MAX_SIZE:
        raise LadleValueError(f"{what} {value!r} is out of range (at most 1 EiB)")
    return n_bytes


def parse_threads(value: int | str) -> int:
    """Return a worker-thread count: an integer from 0 (all cores) to 1024.

    Raises:
        LadleValueError: fractional, negative, too large or not a number.
    """
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LadleValueError(f"threads must be a whole number from 0 (all cores) to "
                              f"{MAX_THREADS}, got {value!r}")
    if not 0 <= value <= MAX_THREADS:
        raise LadleValueError(f"threads must be from 0 (all cores) to {MAX_THREADS}, "
                              f"got {value}")
    return value


def engine_options(threads: int | str = 0, memory_budget: int | str = "256MiB",
                   max_shard_size: int | str = "5GB") -> tuple[int, int, int]:
    """The one check of the engine options every merge, soup and save takes.

    Returns:
        ``(threads, memory_budget bytes, max_shard_size bytes)``.

    Example:
        >>> engine_options(2, "64MiB", "1GB")
        (2, 67108864, 1000000000)
    """
    return (parse_threads(threads), parse_size(memory_budget, "memory_budget", 1),
            parse_size(max_shard_size, "max_shard_size", 1))


def format_size(n_bytes: float) -> str:
    """Human-readable binary size, e.g. ``1.50 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"
