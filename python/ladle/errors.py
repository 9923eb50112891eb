"""Exception classes raised by ladle.

Every error ladle raises derives from :class:`LadleError` and also from the
matching built-in class, so ``except ValueError`` keeps working for callers
that do not know ladle.
"""

from __future__ import annotations

import unicodedata


def printable(text: str, keep_newlines: bool = True) -> str:
    """``text`` with control characters (ESC, CSI, BEL, CR, ...: Unicode category
    Cc) written as ``\\x1b``-style escapes, so a tensor name or path can never
    drive the terminal an error message is printed on.

    Example:
        >>> printable("model\x1b[2J.safetensors")
        'model\\x1b[2J.safetensors'
    """
    return "".join(c if (c == "\n" and keep_newlines) or unicodedata.category(c) != "Cc"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


class LadleError(Exception):
    """Base class of every ladle error."""

    def __str__(self) -> str:
        return printable(super().__str__())


class FormatError(LadleError, ValueError):
    """A checkpoint file is malformed (header, offsets, sizes, index.json)."""


class MismatchError(LadleError, ValueError):
    """Inputs disagree: tensor names, shapes, dtypes or pass-through values."""


class LadleValueError(LadleError, ValueError):
    """An argument is invalid (weights, options, paths)."""


class NonFiniteError(LadleError, ValueError):
    """``check_finite`` found a NaN or Inf."""


class LadleIOError(LadleError, OSError):
    """The operating system refused a read or write (missing file, disk full)."""


class CancelledError(LadleError, KeyboardInterrupt):
    """The run was interrupted; no output was left behind."""


class BackendError(LadleError, RuntimeError):
    """A compute backend (CUDA) failed or is unavailable."""


class LadleWarning(UserWarning):
    """Something was skipped or changed on the way, e.g. a weight file of another
    format in an input directory that is not copied into the merged output."""
