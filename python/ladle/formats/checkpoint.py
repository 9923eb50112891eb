"""Open a checkpoint (headers only): a ``.safetensors`` file, a Hugging Face
sharded directory with ``model.safetensors.index.json``, or a directory holding
exactly one ``.safetensors`` file; PyTorch zip files and directories
(``pytorch_model.bin``, ``pytorch_model.bin.index.json`` + shards) through
:mod:`ladle.formats.torch_bin`. No tensor data is read here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import _core
from ..errors import FormatError, LadleIOError
from ._bulk import bulk_objects
from .hf_cache import hf_cache_root
from .tensor_info import TensorInfo

INDEX_NAME = "model.safetensors.index.json"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Files in a model directory that hold weights, in any format; they are never
# copied to merged outputs (output.copy_extra_files skips them with a warning).
# Everything else that is a regular file (config.json, tokenizer files, ...) is.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".hdf5",
                   ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ggml", ".npz", ".npy",
                   ".pkl", ".pickle", ".tflite", ".pb", ".pdparams", ".ot", ".nemo")


@dataclass
class Checkpoint:
    """Headers of a checkpoint: tensors in file order, metadata, sizes."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_sizes: dict[Path, int]
    extra_files: list[Path] = field(default_factory=list)

    @property
    def n_bytes(self) -> int:
        """Bytes of tensor data (what a merge reads from this input)."""
        return sum(t.n_bytes for t in self.tensors.values())

    @property
    def files(self) -> list[Path]:
        return list(self.file_sizes)

    def __repr__(self) -> str:
        return (f"Checkpoint({str(self.path)!r}, {len(self.tensors)} tensors, "
                f"{len(self.file_sizes)} file(s), {self.n_bytes} bytes)")


@bulk_objects()
def open_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Checkpoint:
    """Read the headers of a checkpoint.

    Args:
        path: a ``.safetensors`` file, a directory with
            ``model.safetensors.index.json`` or exactly one ``.safetensors`` file,
            or the index.json file itself (picks the sharded layout of a
            directory that also holds ``model.safetensors``); or a PyTorch
            ``.bin``/``.pt`` file, or a directory with
            ``pytorch_model.bin.index.json`` or exactly one ``.bin`` file.
        trust_pickle: accept whole-module pickles (their code runs; see
            :mod:`ladle.formats.torch_bin`).

    Returns:
        A :class:`Checkpoint` describing every tensor without reading data.

    Raises:
        FormatError: malformed header or index; LadleIOError: missing files.

    Example:
        >>> ckpt = ladle.open("model/")            # doctest: +SKIP
        >>> ckpt.tensors["lm_head.weight"].shape   # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise LadleIOError(2, f"{path}: no such file or directory")
    if path.is_file() and path.name == INDEX_NAME:  # the sharded layout, picked by name
        shards, weight_map = _read_index(path.parent, path)
        return _from_files(path, shards, weight_map, _extras(path.parent, shards),
                           directory=path.parent)
    if path.is_file() and path.suffix in TORCH_SUFFIXES:
        return _from_torch_files(path, [path], None, [], trust_pickle)
    if path.is_file():
        return _from_files(path, [path], None, [])
    if not path.is_dir():
        raise FormatError(f"{path}: neither a file nor a directory")
    index = path / INDEX_NAME
    single = path / "model.safetensors"
    if index.exists() and single.exists():
        raise FormatError(f"{path}: ambiguous: holds both {single} and {index}; pass the one "
                          f"to use instead of the directory ({single} for the single file, "
                          f"{index} for the sharded layout)")
    if index.exists():
        shards, weight_map = _read_index(path, index)
        return _from_files(path, shards, weight_map, _extras(path, shards))
    candidates = sorted(p for p in path.iterdir() if p.suffix == ".safetensors")
    if not candidates and (path / TORCH_INDEX_NAME).exists():
        shards, weight_map = _read_index(path, path / TORCH_INDEX_NAME)
        return _from_torch_files(path, shards, weight_map,
                                 _extras(path, shards, TORCH_INDEX_NAME), trust_pickle)
    bins = sorted(p for p in path.iterdir() if p.suffix == ".bin")
    if not candidates and len(bins) == 1:
        _check_weight_links(path, bins)
        return _from_torch_files(path, bins, None, _extras(path, bins), trust_pickle)
    if len(candidates) != 1:
        raise FormatError(
            f"{path}: expected {INDEX_NAME} or exactly one .safetensors file, "
            f"found {len(candidates)} .safetensors files")
    _check_weight_links(path, candidates)
    return _from_files(path, candidates, None, _extras(path, candidates))


def _extras(directory: Path, weights: list[Path], index_name: str = INDEX_NAME) -> list[Path]:
    """The directory's other entries (not hidden, not subdirectories, not the
    checkpoint's own files): candidates for copying, which output.copy_extra_files
    narrows to regular non-weight files with a warning for each one skipped."""
    own = {*weights, directory / index_name}
    return sorted(p for p in directory.iterdir()
                  if not p.name.startswith(".") and p not in own
                  and (p.is_symlink() or not p.is_dir()))


def _read_index(directory: Path, index: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        data = json.loads(index.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{index}: not valid JSON: {e}") from None
    except RecursionError:
        raise FormatError(f"{index}: JSON nested too deeply") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise FormatError(f"{index}: 'weight_map' must map tensor names to shard file names")
    # "./shard.safetensors" names the same file as "shard.safetensors"
    weight_map = {k: PurePosixPath(v).as_posix() if v else v for k, v in weight_map.items()}
    shards: list[Path] = []
    for shard_name in dict.fromkeys(weight_map.values()):
        if "\0" in shard_name or not shard_name:
            raise FormatError(f"{index}: invalid shard file name {shard_name!r}")
        shard = directory / shard_name
        escape = ("" if not (os.path.isabs(shard_name) or ".." in Path(shard_name).parts)
                  else "is not a name inside it")
        if escape or (escape := _link_escape(directory, shard)):
            raise FormatError(f"{index}: shard path {shard_name!r} escapes the checkpoint "
                              f"directory {directory}: {escape}")
        if not shard.is_file():
            raise LadleIOError(2, f"{index}: shard {shard_name!r} is missing ({shard})")
        shards.append(shard)
    return shards, weight_map


def _link_escape(directory: Path, file: Path) -> str:
    """Why ``file``, a weight file of ``directory``, may not be read ('' if it may).

    It must resolve inside :func:`ladle.formats.hf_cache.hf_cache_root` of the
    directory: the directory itself, or for a Hugging Face cache snapshot the
    model's cache root, whose ``blobs/`` its links point into (the same rule as
    for the config and tokenizer files copied from it).
    """
    root, real = hf_cache_root(directory), file.resolve()
    if real.is_relative_to(root):
        return ""
    where = ("the model's Hugging Face cache root" if root != directory.resolve()
             else "the directory")
    return f"it resolves to {real}, outside {where} {root}"


def _check_weight_links(directory: Path, files: list[Path]) -> None:
    """Refuse weight files found in ``directory`` that link outside it (see
    :func:`_link_escape`), before any header is read."""
    for file in files:
        if escape := _link_escape(directory, file):
            raise FormatError(f"{file}: weight file links outside its checkpoint directory "
                              f"{directory}: {escape}; not read")


def _from_files(path: Path, files: list[Path], weight_map: dict[str, str] | None,
                extras: list[Path], directory: Path | None = None) -> Checkpoint:
    directory = path if directory is None else directory
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    sizes: dict[Path, int] = {}
    for file in files:
        # name -> TensorInfo, made by the C++ reader (no Python step per tensor).
        header = _core.read_header(str(file), TensorInfo, file)
        sizes[file] = header["file_n_bytes"]
        if not metadata and header["metadata"]:
            metadata = dict(header["metadata"])
        found: dict[str, TensorInfo] = header["tensors"]
        if tensors and tensors.keys() & found.keys():
            name = next(n for n in found if n in tensors)
            raise FormatError(f"{file}: tensor '{name}' also appears in {tensors[name].file}")
        if weight_map is not None:
            listed = _index_name(directory, file)
            for name in found:
                if weight_map.get(name) != listed:
                    raise FormatError(
                        f"{file}: tensor '{name}' is not listed for this shard in "
                        f"{INDEX_NAME} (index says {weight_map.get(name)!r})")
        if tensors:
            tensors.update(found)
        else:
            tensors = found
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise FormatError(f"{directory / INDEX_NAME}: {len(missing)} tensor(s) listed in the "
                              f"index are absent from their shards: {_preview(missing)}")
    return Checkpoint(path, tensors, metadata, sizes, extras)


def _from_torch_files(path: Path, files: list[Path], weight_map: dict[str, str] | None,
                      extras: list[Path], trust_pickle: bool) -> Checkpoint:
    from .torch_bin import torch_file_tensors

    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in torch_file_tensors(file, trust_pickle).items():
            if name in tensors:
                raise FormatError(f"{file}: tensor '{name}' also appears in "
                                  f"{tensors[name].file}")
            if weight_map is not None and weight_map.get(name) != _index_name(path, file):
                raise FormatError(f"{file}: tensor '{name}' is not listed for this shard in "
                                  f"{TORCH_INDEX_NAME} (index says {weight_map.get(name)!r})")
            tensors[name] = info
    if weight_map is not None and set(weight_map) - set(tensors):
        missing = sorted(set(weight_map) - set(tensors))
        raise FormatError(f"{path / TORCH_INDEX_NAME}: {len(missing)} tensor(s) listed in the "
                          f"index are absent from their shards: {_preview(missing)}")
    return Checkpoint(path, tensors, {}, {f: f.stat().st_size for f in files}, extras)


def add_file_sources(core_plan: _core.Plan, ckpts: list[Checkpoint]) -> dict[Path, int]:
    """Map every file of ``ckpts`` into ``core_plan`` once; returns file -> source index
    (for inputs held in memory, see :mod:`ladle.formats.set_checkpoint`, source key -> index)."""
    sources: dict[Path, int] = {}
    for ckpt in ckpts:
        register = getattr(ckpt, "register", None)
        if register is not None:
            register(core_plan, sources)
            continue
        for file, size in ckpt.file_sizes.items():
            if file not in sources:
                sources[file] = core_plan.add_file_source(str(file), size)
    return sources


def _index_name(directory: Path, file: Path) -> str:
    """How index.json names `file`: its path relative to the checkpoint directory."""
    return file.relative_to(directory).as_posix()


def _preview(names: list[str], n: int = 8) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")
