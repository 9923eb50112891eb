"""The closed sets of names of the public API, as string enums, and their
translation into the C++ core's bound enums.

Each is a :class:`enum.StrEnum`: a member *is* its string (``JobKind.SUM ==
"sum"``), so the public API keeps taking plain strings, while Python code names
the set in one place and validates against it. The core takes its own enums
(``_core.JobKind``, ``_core.Sparsify``, ...), whose member names are these
strings: :func:`core_enum` turns one into the other with a clear error.
tests/test_kinds.py checks them against the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from .. import _core
from ..errors import LadleValueError


class JobKind(StrEnum):
    """Job kinds of the engine's one plan (``_core.supports(kind)``)."""

    SUM = "sum"  # weighted sum Σ w_k x_k
    COPY = "copy"  # identical pass-through of the first input's bytes
    MAX = "max"  # elementwise max (integer and bool dtypes)
    NEARSWAP = "nearswap"  # mergekit's nearswap of (base, other) with a threshold t
    TASK = "task"  # task-vector program: TIES, DARE, breadcrumbs
    GRAM = "gram"  # fp64 Gram matrix of a tensor's inputs (SLERP, model stock)
    DOT = "dot"  # fp64 dot products (the learned soup's gradient)
    DELLA = "della"  # DELLA's MAGPRUNE (della, della_linear)
    SCE = "sce"  # SCE: select by variance, calculate weights, erase by sign


# The kinds of Plan::jobs, run by the streaming engine.
ENGINE_KINDS = (JobKind.SUM, JobKind.COPY, JobKind.MAX, JobKind.NEARSWAP)


class IntPolicy(StrEnum):
    """What happens to integer/bool tensors (``int_policy`` / ``--int-policy``)."""

    FIRST = "first"
    MAX = "max"
    ERROR = "error"


class Kernel(StrEnum):
    """CPU kernel choice (``kernel=`` / ``--kernel``)."""

    AUTO = "auto"
    SCALAR = "scalar"
    AVX2 = "avx2"
    AVX512 = "avx512"  # the method kernels; weighted sums stay on AVX2


def parse_kind(kind: type[StrEnum], value: str, what: str) -> StrEnum:
    """``value`` as a member of ``kind``; LadleValueError naming the choices."""
    try:
        return kind(value)
    except ValueError:
        raise LadleValueError(f"{what} must be one of {', '.join(kind)}, "
                              f"not {value!r}") from None


def core_enum(enum: Any, value: str, what: str) -> Any:
    """``value`` (a string, or a StrEnum member) as the member of the core's bound
    ``enum`` (e.g. ``_core.Sparsify``) of that name; LadleValueError naming the choices."""
    try:
        return enum.__members__[value]
    except KeyError:
        raise LadleValueError(f"{what} must be one of {', '.join(enum.__members__)}, "
                              f"not {value!r}") from None


def core_kinds(kinds: Iterable[str]) -> list[Any]:
    """Job kinds (strings or :class:`JobKind`) as ``_core.JobKind`` members."""
    return [core_enum(_core.JobKind, k, "job kind") for k in kinds]
