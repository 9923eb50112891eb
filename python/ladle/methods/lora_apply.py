"""LoRA references in recipes: mergekit's ``model: path/to/model+path/to/adapter``
merges a PEFT LoRA adapter into the model before the model takes part in a merge.

mergekit loads the whole model, merges with peft and saves a copy. ladle streams:
each weight an adapter targets is rewritten, a block of rows at a time, into one
scratch file beside the output (``W' = W + s·B·A``, fp32, rounded once to W's
dtype), and the model is used through a *view*: a Checkpoint whose targeted
tensors point into that file and whose other tensors stay in the model's own
files. Nothing else is read or copied.

Adapter format (PEFT's ``save_pretrained``): ``adapter_config.json`` with
``peft_type: LORA``, ``r``, ``lora_alpha``, ``use_rslora``, ``fan_in_fan_out``,
``rank_pattern``/``alpha_pattern``; ``adapter_model.safetensors`` (or ``.bin``)
with ``base_model.model.<module>.lora_A.weight``/``lora_B.weight`` (linear layers),
``lora_embedding_A``/``lora_embedding_B`` (embeddings), and whole weights of
``modules_to_save``. Scale ``s = alpha/r`` (``alpha/√r`` with rsLoRA).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import _core
from ..errors import FormatError, LadleValueError
from ..formats.checkpoint import Checkpoint, open_checkpoint
from ..formats.tensor_info import TensorInfo

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
# <module>.lora_A.weight, <module>.lora_A.<adapter name>.weight, lora_embedding_A(.<name>)
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_|lora_embedding_)(?P<ab>[AB])"
                     r"(?:\.[^.]+)?(?:\.weight)?$")
_ROWS_BYTES = 64 << 20  # fp32 bytes of one block of rewritten rows
_TORCH = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def split_lora_ref(ref: str, resolve) -> tuple[Path, Path] | None:
    """(model, adapter) of ``model+adapter`` when ``ref`` is not itself a path;
    ``resolve(text)`` finds a local path or returns None. The split is at the
    ``+`` where both sides exist (paths may contain ``+`` themselves)."""
    if "+" not in ref or resolve(ref) is not None:
        return None
    for i in [i for i, c in enumerate(ref) if c == "+"]:
        model, adapter = resolve(ref[:i]), resolve(ref[i + 1:])
        if model is not None and adapter is not None:
            return model, adapter
    raise LadleValueError(f"LoRA reference '{ref}': expected MODEL+ADAPTER with both parts "
                          f"local paths")


def lora_ref_path(model: Path, adapter: Path) -> Path:
    """The name a recipe keeps for a LoRA reference (it is not a path on disk)."""
    return Path(f"{model}+{adapter}")


def is_lora_ref(path: Path) -> bool:
    return not path.exists() and "+" in str(path)


def parts(path: Path) -> tuple[Path, Path]:
    """(model, adapter) of a name made by :func:`lora_ref_path`."""
    found = split_lora_ref(str(path), lambda p: Path(p) if os.path.lexists(p) else None)
    assert found is not None, path
    return found


def model_dir(path: Path) -> Path:
    """Where a recipe's model lives on disk: the model part of a LoRA reference."""
    return parts(path)[0] if is_lora_ref(Path(path)) else Path(path)


def open_model(path: Path) -> Checkpoint:
    """Headers of a recipe's model; of the model part for a LoRA reference."""
    return open_checkpoint(parts(path)[0] if is_lora_ref(path) else path)


@dataclass
class _Update:
    """What the adapter does to one weight of the model."""

    weight: str  # the model's tensor name
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    embedding: bool = False
    full: TensorInfo | None = None  # modules_to_save: the replacement weight
    base: TensorInfo | None = None  # a saved base layer (embeddings): replaces W


def read_adapter(adapter: Path) -> tuple[dict[str, Any], Checkpoint]:
    """The adapter's config (checked) and its weight file's headers."""
    config_path = adapter / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FormatError(f"{adapter}: not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise FormatError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    for unsupported in ("use_dora", "use_qalora"):
        if config.get(unsupported):
            raise LadleValueError(f"{config_path}: {unsupported} adapters are not supported")
    if config.get("bias", "none") != "none":
        raise LadleValueError(f"{config_path}: bias={config['bias']!r} adapters are not "
                              f"supported (only bias 'none')")
    weights = [adapter / n for n in ADAPTER_WEIGHTS if (adapter / n).is_file()]
    if not weights:
        raise FormatError(f"{adapter}: no {' or '.join(ADAPTER_WEIGHTS)}")
    return config, open_checkpoint(weights[0])


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern: a key matches a module name it ends with
    at a dot boundary (or equals); the longest match wins."""
    hits = [k for k in patterns if re.fullmatch(rf"(.*\.)?{k}", module)]
    return patterns[max(hits, key=len)] if hits else default


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module,
                           config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


def plan_updates(model: Checkpoint, adapter: Path, config: dict[str, Any],
                 weights: Checkpoint) -> list[_Update]:
    """Which weights of ``model`` the adapter changes, checked against the model."""
    updates: dict[str, _Update] = {}
    for key, info in weights.tensors.items():
        name = key.removeprefix(_PREFIX)
        m = _FACTOR.match(name)
        if m is None and name.endswith(".base_layer.weight"):
            # peft saves a targeted embedding's own weight (save_embedding_layers):
            # it is loaded in place of the model's before the delta is added.
            target = name.replace(".base_layer.weight", ".weight")
            updates.setdefault(target, _Update(target)).base = info
            continue
        if m is None:  # modules_to_save: a whole replacement weight
            target = name.replace(".modules_to_save.default", "")
            update = updates.setdefault(target, _Update(target))
            update.full = info
            continue
        target = f"{m['module']}.weight"
        update = updates.setdefault(target, _Update(target))
        update.embedding = m["kind"] == "lora_embedding_"
        setattr(update, m["ab"].lower(), info)
    for update in updates.values():
        _check_update(model, adapter, config, update)
    return list(updates.values())


def _check_update(model: Checkpoint, adapter: Path, config: dict[str, Any],
                  u: _Update) -> None:
    where = f"{adapter}: '{u.weight}'"
    w = model.tensors.get(u.weight)
    if w is None:
        raise LadleValueError(f"{where}: the adapter changes a weight that {model.path} "
                              f"does not have")
    if w.dtype not in _TORCH:
        raise LadleValueError(f"{where}: the model's weight has dtype {w.dtype}; LoRA applies "
                              f"to float weights only")
    if u.base is not None and (tuple(u.base.shape) != tuple(w.shape)
                               or u.base.dtype not in _TORCH):
        raise LadleValueError(f"{where}: the adapter's saved base layer "
                              f"{u.base.dtype}{list(u.base.shape)} does not fit the model's "
                              f"{w.dtype}{list(w.shape)} (a resized vocabulary is not supported)")
    if u.full is not None:
        if u.a is not None or u.b is not None:
            raise LadleValueError(f"{where}: both LoRA factors and a whole weight")
        if tuple(u.full.shape) != tuple(w.shape) or u.full.dtype not in _TORCH:
            raise LadleValueError(f"{where}: replacement weight {u.full.dtype}{list(u.full.shape)}"
                                  f" does not fit the model's {w.dtype}{list(w.shape)}")
        return
    if u.a is None or u.b is None:
        raise LadleValueError(f"{where}: lora_{'A' if u.a is None else 'B'} is missing")
    if len(w.shape) != 2 or len(u.a.shape) != 2 or len(u.b.shape) != 2:
        raise LadleValueError(f"{where}: LoRA factors and weight must be 2-D")
    (ra, ka), (kb, rb) = u.a.shape, u.b.shape
    rows, cols = w.shape
    transposed = u.embedding or bool(config.get("fan_in_fan_out"))
    want = (cols, rows) if transposed else (rows, cols)
    if ra != rb or (kb, ka) != want or u.a.dtype not in _TORCH or u.b.dtype not in _TORCH:
        raise LadleValueError(f"{where}: factors A{list(u.a.shape)} B{list(u.b.shape)} do not "
                              f"fit the weight {list(w.shape)}")


def _rows(info: TensorInfo, lo: int, hi: int):
    """Rows [lo, hi) of a 2-D tensor (any row length; 1-D: elements) as fp32 torch."""
    import numpy as np
    import torch

    cols = info.shape[1] if len(info.shape) > 1 else 1
    item = info.n_bytes // max(1, math.prod(info.shape))
    raw = np.fromfile(info.file, dtype=np.uint8, count=(hi - lo) * cols * item,
                      offset=info.offset + lo * cols * item)
    t = torch.from_numpy(raw).view(getattr(torch, _TORCH[info.dtype]))
    return t.reshape(hi - lo, cols).to(torch.float32)


def _matrix(info: TensorInfo):
    return _rows(info, 0, info.shape[0])


def write_applied(model: Checkpoint, updates: list[_Update], config: dict[str, Any],
                  path: Path) -> dict[str, TensorInfo]:
    """The rewritten weights into one safetensors file; their TensorInfos there."""
    import torch

    entries, offset = [], 0
    for u in updates:
        w = model.tensors[u.weight]
        entries.append((u.weight, w.dtype, list(w.shape), offset, offset + w.n_bytes))
        offset += w.n_bytes
    header = _core.serialize_header(entries, [("format", "pt")])
    with open(path, "xb") as fh:
        fh.write(header)
        for u in updates:
            w = model.tensors[u.weight]
            out_dtype = getattr(torch, _TORCH[w.dtype])
            rows = w.shape[0] if w.shape else 1
            step = max(1, _ROWS_BYTES // (4 * max(1, math.prod(w.shape[1:]))))
            a = b = None
            if u.full is None:
                a, b = _matrix(u.a), _matrix(u.b)
                scale = _scale(config, u.weight[:-len(".weight")], a.shape[0])
            transposed = u.embedding or bool(config.get("fan_in_fan_out"))
            for lo in range(0, rows, step):
                hi = min(rows, lo + step)
                if u.full is not None:
                    block = _rows(u.full, lo, hi)
                else:
                    delta = (a[:, lo:hi].T @ b.T) if transposed else (b[lo:hi] @ a)
                    block = _rows(u.base or w, lo, hi) + scale * delta
                fh.write(block.to(out_dtype).contiguous().view(torch.uint8).numpy().tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    return {name: TensorInfo(name, dtype, tuple(shape), path, len(header) + begin, end - begin)
            for name, dtype, shape, begin, end in entries}


def lora_view(ref: Path, scratch: Path, index: int) -> Checkpoint:
    """The model of LoRA reference ``ref`` with its adapter merged in, as a view."""
    model_path, adapter = parts(ref)
    model = open_checkpoint(model_path)
    config, weights = read_adapter(adapter)
    updates = plan_updates(model, adapter, config, weights)
    if not updates:
        raise LadleValueError(f"{adapter}: the adapter holds no LoRA weights")
    path = scratch / f"lora-{index}.safetensors"
    applied = write_applied(model, updates, config, path)
    return replace(model, path=ref, tensors={**model.tensors, **applied},
                   file_sizes={**model.file_sizes, path: path.stat().st_size})
