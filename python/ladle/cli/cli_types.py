"""argparse ``type=`` converters built on the shared validators of
:mod:`ladle.engine._units`, so the CLI refuses a bad number with the same message as
the Python API, at parse time, as one ``ladle: error:`` line (exit 2). Byte
sizes stay strings here: the API's :func:`ladle.engine._units.engine_options` checks
them first thing, before any file is opened or locked.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..engine._units import parse_threads
from ..errors import LadleError, LadleValueError


def option_type(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """Wrap a validator raising LadleError as an argparse type converter."""
    def convert(text: str) -> object:
        try:
            return check(text)
        except LadleError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise LadleValueError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise LadleValueError(f"must be at least 1, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LadleValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise LadleValueError(f"must be a finite number, got {text!r}")
    return value


THREADS = option_type(parse_threads, "threads")
COUNT = option_type(_count, "count")  # steps, grid points, bins: at least one
FINITE = option_type(_finite, "finite")  # alphas, margins: a real number
