"""PyTorch zip checkpoints (``pytorch_model.bin``, HF ``.bin`` shards, ``.pt``) as
streaming inputs: the file is opened with ``torch.load(mmap=True, weights_only=True)``
only to learn each tensor's name, dtype, shape and storage; the bytes are then read
by the C++ engine straight from the file, like a safetensors shard (so resume,
devices, distributed merges, config copying and ``verify`` work the same way).

``torch.save`` stores each storage uncompressed as a zip record; a contiguous
tensor is ``record offset + storage_offset · itemsize`` bytes into the file.

Whole-module pickles (``torch.save(model)``, as the wise-ft repo writes) need
arbitrary code to load and are refused unless ``trust_pickle=True``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .tensor_info import TensorInfo
from .torch_io import state_dict_of, torch_dtype_name

# What to do with a whole-module pickle, said in every refusal.
CONVERT_HINT = ("it is a pickled Python object (e.g. torch.save(model)), and loading it can run "
                "arbitrary code; in an environment you trust convert it once with "
                "`python -c \"import torch, safetensors.torch as st; m = torch.load('IN', "
                "weights_only=False); st.save_file({k: v.contiguous() for k, v in "
                "m.state_dict().items()}, 'OUT.safetensors')\"`, or pass --trust-pickle "
                "(trust_pickle=True) to load it anyway")


def torch_file_tensors(file: Path, trust_pickle: bool = False) -> dict[str, TensorInfo]:
    """Where every tensor of a PyTorch zip checkpoint lives in ``file``.

    Args:
        file: a ``torch.save`` zip file (``.bin``/``.pt``/``.pth``/``.ckpt``).
        trust_pickle: load a whole-module pickle (runs its code) after a warning.

    Returns:
        name -> TensorInfo with absolute byte offsets into ``file``.

    Raises:
        FormatError: not a zip checkpoint, a pickle (unless trusted), or a tensor
            whose bytes are not one contiguous run of its storage.

    Example:
        >>> torch_file_tensors(Path("pytorch_model.bin"))["lm_head.weight"].offset  # doctest: +SKIP
    """
    import torch

    obj = _load(torch, file, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    tensors = state_dict_of(obj, str(file))
    base = _mmap_base(torch, file, tensors)
    out: dict[str, TensorInfo] = {}
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise FormatError(f"{file}: tensor '{name}' is not contiguous in its storage; "
                              f"convert the file with `ladle convert {file} -o OUT/`")
        offset = t.data_ptr() - base if t.nbytes else 0
        out[name] = TensorInfo(name, torch_dtype_name(t), tuple(t.shape), file, offset,
                               t.nbytes)
    return out


def _load(torch: Any, file: Path, trust_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch's notes on sparse tensors: ladle
            warnings.simplefilter("ignore", UserWarning)  # reports what it refuses itself
            return torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        text = str(e)
        if "weights_only" not in text and "Unsupported global" not in text:
            first = text.splitlines()[0] if text else type(e).__name__
            raise FormatError(f"{file}: not a weights-only PyTorch checkpoint: {first}") from None
    if not trust_pickle:
        raise FormatError(f"{file}: refused: {CONVERT_HINT}")
    warnings.warn(f"{file}: loading a pickled object with trust_pickle=True runs its code",
                  stacklevel=3)
    try:
        return torch.load(str(file), map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise FormatError(f"{file}: could not be unpickled: {e}") from None


def _mmap_base(torch: Any, file: Path, tensors: dict[str, Any]) -> int:
    """Address at which ``torch.load(mmap=True)`` mapped ``file``: every storage must
    sit at base + the offset of one data record of the zip, with that record's size."""
    reader = torch._C.PyTorchFileReader(str(file))
    records = {}
    for name in reader.get_all_records():
        if "/" in name and name.rsplit("/", 2)[-2] == "data" and reader.get_record_size(name):
            records[reader.get_record_offset(name)] = reader.get_record_size(name)
    storages = {}
    for t in tensors.values():
        s = t.untyped_storage()
        if s.nbytes():
            storages[s.data_ptr()] = s.nbytes()
    if not storages:
        return 0
    base = min(storages) - min(records, default=0)
    for ptr, n_bytes in storages.items():
        if records.get(ptr - base) != n_bytes:
            raise FormatError(f"{file}: tensor storages do not match the zip records "
                              f"(compressed or unusual archive); convert it with "
                              f"`ladle convert {file} -o OUT/`")
    return base
