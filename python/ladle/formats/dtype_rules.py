"""The output-dtype rule for float tensors whose inputs differ in dtype.

Without ``--dtype`` a merged tensor is written in the narrowest float dtype
that holds every input dtype exactly ("the widest input dtype"):

    F64 ⊃ F32 ⊃ BF16, F16 ⊃ F8_E4M3, F8_E5M2

F64 holds every float dtype and F32 every one but F64. BF16 and F16 each hold
both FP8 formats but not each other (BF16 has 8 exponent bits, F16 11 mantissa
bits), so BF16 + F16 gives F32. F8_E4M3 + F8_E5M2 gives F16, the narrowest
dtype holding both (BF16 holds them too; F16 keeps more mantissa).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import compress, repeat
from typing import Any

# dtype -> the float dtypes it represents exactly.
_HOLDS = {
    "F64": {"F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"},
    "F32": {"F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"},
    "BF16": {"BF16", "F8_E4M3", "F8_E5M2"},
    "F16": {"F16", "F8_E4M3", "F8_E5M2"},
    "F8_E4M3": {"F8_E4M3"},
    "F8_E5M2": {"F8_E5M2"},
}
# Candidates, narrowest first (F16 before BF16: the E4M3 + E5M2 case).
_BY_WIDTH = ("F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64")


def widest_dtype(dtypes: Iterable[str]) -> str:
    """The narrowest float dtype holding every one of ``dtypes`` exactly.

    Example:
        >>> widest_dtype(["F16", "F32"]), widest_dtype(["BF16", "F16"])
        ('F32', 'F32')
    """
    wanted = set(dtypes)
    return next(d for d in _BY_WIDTH if wanted <= _HOLDS[d])


# Companions holding FP8 scales: DeepSeek-V3 ``W_scale_inv`` (128x128 blocks) and
# compressed-tensors ``W_scale`` (``layer.weight_scale``: per tensor or channel).
SCALE_SUFFIXES = ("_scale_inv", "_scale")


def fp8_scale_pairs(tensors: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(weight, scale) name pairs: an FP8 tensor with a scale companion.

    ``tensors`` maps names to objects with a ``dtype`` attribute (TensorInfo).
    """
    pairs = []
    # The candidates, filtered without a Python-level step per name (10^6 of them).
    for name in compress(tensors, map(str.endswith, tensors, repeat(SCALE_SUFFIXES))):
        for suffix in SCALE_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in tensors and tensors[base].dtype.startswith("F8_"):
                pairs.append((base, name))
                break
    return pairs
