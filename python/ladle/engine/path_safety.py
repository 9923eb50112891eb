"""The one place that decides which paths ladle may write, replace, delete or copy.

Every output (``merge``, ``soup``, ``--config`` recipes, ``save``/``write_tensors``,
greedy/learned soups, ``convert``, distributed merges) goes through
:class:`ladle.engine.output.OutputDir`, which calls :func:`check_output_path`; the files
copied from the first input go through :func:`copy_regular_file`. The rules are
documented in docs/safety.md:

- an output never equals, contains or lies inside an input (real paths and
  ``(st_dev, st_ino)`` identities are compared, so symlinks, ``..`` and bind
  mounts cannot hide an overlap);
- ``overwrite`` replaces only a regular file or a directory ladle wrote (its
  safetensors headers carry ``ladle_*`` metadata), never a symlink, FIFO,
  device, socket or a directory of the user's;
- copied non-weight files are regular files inside the input directory (or the
  Hugging Face cache root of a snapshot), opened with ``O_NOFOLLOW|O_NONBLOCK``
  and checked with ``fstat`` on the open descriptor.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import LadleValueError
from ..formats.checkpoint import INDEX_NAME, WEIGHT_SUFFIXES
from ..formats.hf_cache import hf_cache_root

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_INDEX_MAX_BYTES = 64 << 20  # an index.json of 10^6 tensors is ~60 MB


class UnsafePathError(LadleValueError):
    """A path ladle refuses to write, replace, delete or read (see docs/safety.md)."""


# ------------------------------------------------------------------ inputs

def input_paths(objs: Iterable[Any]) -> list[Path]:
    """The files and directories behind ``objs`` (paths, Checkpoints, TensorSets);
    live modules and dicts of tensors have none."""
    paths: list[Path] = []
    for obj in objs:
        if isinstance(obj, (str, os.PathLike)):
            paths.append(Path(obj))
            continue
        files = getattr(obj, "file_sizes", None)  # a Checkpoint
        if files is not None:
            paths.append(Path(obj.path))
            paths.extend(Path(f) for f in files)
            continue
        for spec in getattr(obj, "sources", {}).values():  # a TensorSet
            if getattr(spec, "path", None):
                paths.append(Path(spec.path))
        label = getattr(obj, "label", None)
        if isinstance(label, str) and not label.startswith("<") and os.path.lexists(label):
            paths.append(Path(label))  # a .pt/.bin file read into memory
    return paths


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _chain(path: Path) -> list[tuple[Path, tuple[int, int]]]:
    """The real path of ``path``'s nearest existing ancestor-or-self and every
    directory above it, with their identities (a bind mount shares them)."""
    real = Path(os.path.realpath(path))
    out = []
    for p in (real, *real.parents):
        ident = _identity(p)
        if ident is not None:
            out.append((p, ident))
    return out


def check_not_an_input(dest: Path, inputs: Iterable[Path], *, what: str = "output") -> None:
    """Refuse a ``dest`` that is an input, contains one, or lies inside an input
    directory: replacing it would delete the user's files, and writing into it
    would change an input (a second weight file makes a directory ambiguous)."""
    dest_chain = _chain(dest)
    dest_exists = os.path.lexists(dest)
    dest_ident = _identity(dest) if dest_exists else None
    for src in inputs:
        src_ident = _identity(src)
        if src_ident is None:
            continue  # missing inputs are reported when they are opened
        if dest_ident is not None and dest_ident == src_ident:
            relation = "is the input"
        elif dest_ident is not None and any(i == dest_ident for _, i in _chain(src)):
            relation = "contains the input"
        elif os.path.isdir(src) and any(i == src_ident for _, i in dest_chain):
            relation = "lies inside the input directory"
        else:
            continue
        raise UnsafePathError(f"{dest}: the {what} {relation} {src}; ladle never writes "
                              f"over or into its inputs: choose a destination outside them")


# ------------------------------------------------------------ destinations

def check_replaceable(dest: Path, *, overwrite: bool, single_file: bool) -> None:
    """Refuse a destination ladle must not replace (see the module doc).

    Nothing is opened: ``lstat`` decides, and a directory is recognised by the
    headers of its weight files, which must be regular files.
    """
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UnsafePathError(f"{dest}: cannot inspect the destination: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{dest}: destination is a symbolic link (to "
                              f"{os.readlink(dest)}); ladle replaces only regular files and "
                              f"directories it wrote: remove the link or choose another output")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UnsafePathError(f"{dest}: destination is a {_kind(st.st_mode)}, not a regular "
                              f"file or directory; ladle never writes to or replaces it")
    if not overwrite or single_file != stat.S_ISREG(st.st_mode):
        return  # the caller reports "exists" / "the other kind"
    if stat.S_ISDIR(st.st_mode):
        reason = not_a_ladle_directory(dest)
        if reason:
            raise UnsafePathError(f"{dest}: --overwrite replaces only a directory ladle wrote, "
                                  f"and this one {reason}; remove it yourself or choose "
                                  f"another output")


def not_a_ladle_directory(path: Path) -> str:
    """Why ``path`` is not a directory ladle wrote ('' when it is, or is empty).

    A ladle output holds only regular files, and its weight file (the first
    shard of index.json, or model.safetensors) carries ``ladle_*`` metadata,
    which every ladle version writes (``ladle_method`` at least).
    """
    from .. import _core

    entries = list(os.scandir(path))
    if not entries:
        return ""
    for e in entries:
        if not e.is_file(follow_symlinks=False):
            return f"holds {e.name!r}, which is not a regular file"
    names = {e.name for e in entries}
    weights = ""
    if INDEX_NAME in names:
        try:
            index = json.loads(read_regular_file(path / INDEX_NAME, _INDEX_MAX_BYTES))
            weights = next(iter(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, StopIteration, AttributeError,
                RecursionError):
            return f"has an unreadable {INDEX_NAME}"
    elif "model.safetensors" in names:
        weights = "model.safetensors"
    if not isinstance(weights, str) or weights not in names:
        return "holds no safetensors checkpoint"
    try:
        metadata = _core.read_header(str(path / weights))["metadata"] or {}
    except Exception:  # noqa: BLE001 - any unreadable header means "not ladle's"
        return f"has an unreadable {weights}"
    if not any(k.startswith("ladle_") for k in metadata):
        return f"has no ladle metadata in {weights}"
    return ""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def check_output_path(dest: Path, inputs: Iterable[Path], *, overwrite: bool,
                      single_file: bool, side_paths: Iterable[Path] = ()) -> None:
    """Every check of an output path that needs no reading of the inputs' data.

    ``side_paths`` (the partial directory) must not hold an input either.
    """
    inputs = list(inputs)
    check_not_an_input(dest, inputs)
    for side in side_paths:
        check_not_an_input(side, inputs, what="working directory")
    check_replaceable(dest, overwrite=overwrite, single_file=single_file)


# ------------------------------------------------------------- reading files

def is_weight_file(name: str) -> bool:
    """A file of weights (any format) or a weight index such as
    ``pytorch_model.bin.index.json``: never copied into a merged output."""
    return name.endswith((*WEIGHT_SUFFIXES, ".index.json"))


def open_regular(path: Path, *, root: Path | None = None) -> int:
    """Open ``path`` for reading only if it is a regular file (inside ``root``,
    when given, after resolving links). Never blocks (FIFO) and never opens a
    device; the type is checked with fstat on the descriptor itself.

    Raises:
        UnsafePathError: the path escapes ``root`` or is not a regular file.
        OSError: it cannot be opened.
    """
    real = Path(os.path.realpath(path))
    if root is not None and not real.is_relative_to(root):
        raise UnsafePathError(f"{path}: links outside {root} (to {real}); not read")
    st = os.stat(real)  # no open(): opening a device can have side effects
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path}: is a {_kind(st.st_mode)}, not a regular file; not read")
    fd = os.open(real, _OPEN_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
        os.close(fd)
        raise UnsafePathError(f"{path}: is a {_kind(st.st_mode)}, not a regular file; not read")
    return fd


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise UnsafePathError(f"{path}: {size} bytes, more than the {max_bytes} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafePathError(f"{path}: more than the {max_bytes} bytes allowed")
    return data


def copy_regular_file(src: Path, dst: Path) -> None:
    """Copy ``src`` (a regular file inside its directory's :func:`ladle.formats.hf_cache.hf_cache_root`)
    to a new file ``dst`` with the permissions of the output's shards (0o644 & ~umask),
    never the source's mode; ``dst`` must not exist (O_EXCL, no link followed)."""
    fd = open_regular(src, root=hf_cache_root(src.parent))
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644)
        try:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
