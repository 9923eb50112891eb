"""What an ``evaluate(module)`` callback may return as a score: a real number.

A greedy soup compares scores to accept or reject ingredients; a NaN compares false
with everything and ``None``/a string cannot be compared at all, so either would
silently decide which ingredients make the soup. Such a score is an error naming the
call that produced it. Accepted: ``int``, ``float``, numpy scalars and 0-d arrays, torch
0-d tensors (their ``.item()``), ``fractions.Fraction``; ±Inf compare as expected and
are kept. Refused: NaN, ``None``, ``bool`` (almost always a comparison such as
``acc > best`` returned by mistake), complex numbers, strings, tensors/arrays with
more than zero dimensions.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import LadleValueError


def as_score(value: Any, what: str) -> float:
    """``value`` as a float score, or LadleValueError naming ``what`` (the call).

    Example:
        >>> as_score(0.5, "evaluate(module)")
        0.5
    """
    scalar = value
    if hasattr(value, "ndim") and hasattr(value, "item") and not isinstance(value, numbers.Number):
        if value.ndim != 0:  # a torch tensor or numpy array: only a 0-d one is a number
            raise LadleValueError(f"{what} returned a {type(value).__name__} of shape "
                                  f"{tuple(value.shape)}; the score must be one real number")
        scalar = value.item()
    if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):  # np.bool_ is no Real
        raise LadleValueError(f"{what} returned {value!r} ({type(value).__name__}); the score "
                              f"must be a real number (int, float, numpy or 0-d torch scalar)")
    score = float(scalar)
    if math.isnan(score):
        raise LadleValueError(f"{what} returned NaN; the score must be a real number")
    return score
