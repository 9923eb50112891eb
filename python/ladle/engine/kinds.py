"""The closed sets of names that cross into the C++ core, as string enums.

Each is a :class:`enum.StrEnum`: a member *is* its string (``JobKind.SUM ==
"sum"``), so the public API keeps taking plain strings and the bindings
receive them unchanged, while Python code names the set in one place and
validates against it. tests/test_kinds.py checks them against the core.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import LadleValueError


class JobKind(StrEnum):
    """Job kinds of the engine's one plan (``_core.supports(kind)``)."""

    SUM = "sum"  # weighted sum Σ w_k x_k
    COPY = "copy"  # identical pass-through of the first input's bytes
    MAX = "max"  # elementwise max (integer and bool dtypes)
    NEARSWAP = "nearswap"  # mergekit's nearswap of (base, other) with a threshold t
    TASK = "task"  # task-vector program: TIES, DARE, breadcrumbs, della
    GRAM = "gram"  # fp64 Gram matrix of a tensor's inputs (SLERP, model stock)
    DOT = "dot"  # fp64 dot products (the learned soup's gradient)


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


def parse_kind(kind: type[StrEnum], value: str, what: str) -> StrEnum:
    """``value`` as a member of ``kind``; LadleValueError naming the choices."""
    try:
        return kind(value)
    except ValueError:
        raise LadleValueError(f"{what} must be one of {', '.join(kind)}, "
                              f"not {value!r}") from None
