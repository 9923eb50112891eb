"""Crash-safe output layout: everything is written into ``<dest>.ladle-partial/``
beside the destination and moved into place only once complete and fsynced.
A failed run removes its partial directory; the destination is never touched
until the final rename.

Resume: each shard, once fsynced, is recorded with its size and CRC-32C in
``<dest>.ladle-partial/.ladle-manifest.json`` together with a hash of the plan.
An interrupted run (Ctrl-C, SIGKILL, power loss) leaves the finished shards
there; ``resume=True`` keeps those whose checksum still matches and writes the
rest. Concurrency: ``<dest>.ladle-lock`` is flock()ed for the whole run, so a
second merge into the same destination fails instead of interleaving.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from .. import _core
from ..errors import LadleIOError, LadleValueError, LadleWarning
from .path_safety import (
    UnsafePathError,
    check_output_path,
    copy_regular_file,
    input_paths,
    is_weight_file,
    not_a_ladle_directory,
)

T = TypeVar("T")
PARTIAL_SUFFIX = ".ladle-partial"
LOCK_SUFFIX = ".ladle-lock"
OLD_SUFFIX = ".ladle-old"
MANIFEST_NAME = ".ladle-manifest.json"
INDEX_NAME = "model.safetensors.index.json"


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Re-raise OSError as LadleIOError saying what was being done."""
    try:
        yield
    except LadleIOError:
        raise
    except OSError as e:
        reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
        raise LadleIOError(e.errno, f"{what}: {reason} ({e})") from e


class OutputDir:
    """The partial directory of one merge and its final commit.

    Args:
        dest: a ``.safetensors`` file (single-file output) or a directory.
        overwrite: replace an existing destination, only at the final rename.
        inputs: the paths the output is made from; ``dest`` may not be one of
            them, contain one or lie inside one (see :mod:`ladle.engine.path_safety`).
    """

    def __init__(self, dest: str | os.PathLike, overwrite: bool = False,
                 inputs: Iterable[Path] = ()):
        self.dest = Path(dest)
        self.inputs = list(inputs)
        self.single_file = self.dest.suffix == ".safetensors"
        self.partial = self.dest.with_name(self.dest.name + PARTIAL_SUFFIX)
        self.lock_path = self.dest.with_name(self.dest.name + LOCK_SUFFIX)
        self.overwrite = overwrite
        self.plan_hash = ""
        self.finished: dict[str, dict] = {}  # shard file name -> {"n_bytes", "crc32c"}
        self.manifest_name = MANIFEST_NAME  # ranks of a distributed merge keep their own
        self._lock_fd = -1

    def lock(self) -> None:
        """Take the destination's lock (non-blocking); a second merge fails cleanly."""
        while True:
            fd = _open_lock_file(self.lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LadleIOError(errno.EBUSY, f"{self.dest}: another ladle merge is "
                                       f"writing this destination (lock {self.lock_path} is "
                                       f"held); wait for it or pick another output") from None
                raise LadleIOError(e.errno, f"{self.lock_path}: cannot lock: {e.strerror}") from None
            # The holder we waited on may have unlinked the file: lock the live one.
            try:
                same = _same_file(self.lock_path, fd)
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            try:  # only the file we locked: never a file put there since
                if _same_file(self.lock_path, self._lock_fd):
                    os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = -1

    def check_destination(self) -> None:
        """Refuse an existing destination unless ``overwrite``; check the parent.

        Before anything else: the destination is none of the inputs, and is
        something ladle may replace (:func:`ladle.engine.path_safety.check_output_path`).
        """
        check_output_path(self.dest, self.inputs, overwrite=self.overwrite,
                          single_file=self.single_file, side_paths=[self.partial])
        if self.dest.exists() and not self.overwrite:
            raise LadleValueError(f"{self.dest}: destination exists (use overwrite=True / "
                                  f"--overwrite to replace it)")
        if self.dest.exists() and self.single_file != self.dest.is_file():
            kind = "file" if self.dest.is_file() else "directory"
            raise LadleValueError(f"{self.dest}: destination is an existing {kind}; "
                                  f"cannot replace it with the other kind")
        if not self.dest.parent.is_dir():
            raise LadleIOError(2, f"{self.dest.parent}: parent directory does not exist")

    def create(self, plan_hash: str = "", resume: bool = False) -> Path:
        """Create a fresh partial directory (a stale one is removed first).

        With ``resume``, a partial directory of the same plan is kept: shards
        recorded in its manifest whose size and CRC-32C still match stay in
        place (same inode and mtime) and end up in :attr:`finished`; anything
        else in it is deleted.
        """
        self.check_destination()
        self.plan_hash = plan_hash
        self.finished = {}
        if (resume and self.partial.is_dir() and not self.partial.is_symlink()
                and self._load_for_resume()):
            return self.partial
        self.remove_stale_partial()
        with os_errors(f"{self.partial}: cannot create the partial output directory"):
            self.partial.mkdir()
            self._write_manifest()
        return self.partial

    def remove_stale_partial(self) -> None:
        """Remove a partial directory an earlier run left, only when it is
        recognisably ladle's: a real directory, empty or holding ladle's manifest.
        Anything else at that name (a link, a file, a user's directory) is refused,
        never deleted."""
        try:
            st = os.lstat(self.partial)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"{self.partial}: exists and is not a directory ladle left (it is "
                f"{'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a directory'}); "
                f"ladle does not delete it: remove it yourself or choose another output")
        names = os.listdir(self.partial)
        # Killed while committing, a partial holds a finished output but no manifest.
        if (names and not any(is_manifest_name(n) for n in names)
                and not_a_ladle_directory(self.partial)):
            raise UnsafePathError(
                f"{self.partial}: exists but holds no ladle manifest ({MANIFEST_NAME}), so "
                f"ladle did not leave it and does not delete it: remove it yourself or "
                f"choose another output")
        with os_errors(f"{self.partial}: cannot remove the stale partial output directory"):
            shutil.rmtree(self.partial)

    def _load_for_resume(self) -> bool:
        """Keep the verified shards of a partial directory; False when it holds
        nothing resumable (no or unreadable manifest: killed before the first
        shard finished or while committing), so the caller starts over."""
        path = self.partial / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_bytes())
            recorded = manifest["shards"]
            old_hash = manifest["plan_hash"]
            if not isinstance(recorded, dict) or not isinstance(old_hash, str):
                return False
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return False
        if old_hash != self.plan_hash:
            raise LadleValueError(f"{self.partial}: cannot resume, it belongs to a different "
                                  f"merge (plan hash {old_hash[:12]}, this merge "
                                  f"{self.plan_hash[:12]}: inputs, weights or options "
                                  f"changed); rerun without --resume to start over")
        for name, info in recorded.items():
            shard = self.partial / name
            if ("/" in name or name.startswith(".") or not isinstance(info, dict)
                    or not shard.is_file() or shard.is_symlink()):
                continue
            if (shard.stat().st_size == info.get("n_bytes")
                    and file_crc32c(shard) == info.get("crc32c")):
                self.finished[name] = {"n_bytes": info["n_bytes"], "crc32c": info["crc32c"]}
        for entry in self.partial.iterdir():
            if entry.name not in self.finished and entry.name != MANIFEST_NAME:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self._write_manifest()
        return True

    def record_shard(self, file_name: str, crc32c: int | None = None) -> None:
        """Record a finished, fsynced shard in the manifest with its CRC-32C:
        ``crc32c`` when the writer joined it from its writes (``finish_sink``'s
        result), else read from the file."""
        path = self.partial / file_name
        crc = f"{crc32c:08x}" if crc32c is not None else file_crc32c(path)
        self.finished[file_name] = {"n_bytes": path.stat().st_size, "crc32c": crc}
        self._write_manifest()

    def _write_manifest(self) -> None:
        data = {"version": 1, "plan_hash": self.plan_hash, "shards": self.finished}
        path = self.partial / self.manifest_name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(self.partial)

    def shard_path(self, file_name: str) -> Path:
        return self.partial / file_name

    def write_index(self, weight_map: dict[str, str], total_size: int) -> None:
        data = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        if self.finished:
            data["metadata"]["ladle_crc32c"] = {k: v["crc32c"] for k, v in self.finished.items()}
        path = self.partial / INDEX_NAME
        with os_errors(f"{path}: cannot write the index"):
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            _fsync_file(path)

    def copy_extra_files(self, files: list[Path]) -> list[Path]:
        """Copy config/tokenizer files of the first input (directory outputs only).

        Only regular files inside the input directory (or its Hugging Face cache
        root) are copied, with the output's own permissions; weight files of other
        formats (``*.bin``, ``tf_model.h5``, ``*.onnx``, ...) and anything else
        are skipped with a :class:`~ladle.errors.LadleWarning`, since they were not
        merged. Returns the files copied.
        """
        if self.single_file:
            return []
        copied = []
        for src in files:
            if is_weight_file(src.name):
                _notice(f"{src}: not copied into the output: weights in another format "
                        f"(or not part of the checkpoint) were not merged")
                continue
            dst = self.partial / src.name
            try:
                with os_errors(f"{dst}: cannot copy {src}"):
                    copy_regular_file(src, dst)
            except UnsafePathError as e:
                _notice(f"{e}; not copied into the output")
                continue
            copied.append(src)
        return copied

    def commit(self) -> Path:
        """Move the finished output into place; the old destination goes last.

        A directory replacing an existing one is swapped in with one atomic
        renameat2(RENAME_EXCHANGE) where the kernel supports it, so a crash at
        any point leaves either the old or the new directory at ``dest``.
        """
        with os_errors(f"{self.dest}: cannot move the finished output into place"):
            return self._commit()

    def _commit(self) -> Path:
        manifest = self.partial / MANIFEST_NAME
        if manifest.exists():
            manifest.unlink()
        _fsync_dir(self.partial)
        if self.single_file:
            files = list(self.partial.iterdir())
            if len(files) != 1:
                raise LadleValueError(f"{self.partial}: expected one file, found {len(files)}")
            os.replace(files[0], self.dest)  # atomic, replaces an old file
            self.partial.rmdir()
        elif self.dest.exists() and _exchange(self.partial, self.dest):
            shutil.rmtree(self.partial)  # now holds the old destination
        elif self.dest.exists():
            backup = self.dest.with_name(self.dest.name + OLD_SUFFIX)
            try:  # ours alone: mkdir fails on anything already there, links included
                os.mkdir(backup, 0o700)
            except FileExistsError:
                raise UnsafePathError(f"{backup}: already exists; ladle did not create it and "
                                      f"does not delete it: remove it and rerun (the new "
                                      f"output was not moved into place)") from None
            os.rename(self.dest, backup)  # replaces the empty directory made above
            os.rename(self.partial, self.dest)
            shutil.rmtree(backup)
        else:
            os.rename(self.partial, self.dest)
        _fsync_dir(self.dest.parent)
        return self.dest

    def abort(self, keep_finished: bool = False) -> bool:
        """Remove the partial directory; with ``keep_finished`` (an interrupted
        run) keep it when it holds finished shards, deleting only unfinished
        files, so ``resume`` can continue. Returns True when something was kept.
        """
        if keep_finished and self.finished and self.partial.is_dir():
            try:
                for entry in self.partial.iterdir():
                    if entry.name not in self.finished and entry.name != MANIFEST_NAME:
                        entry.unlink()
                return True
            except OSError:
                pass
        shutil.rmtree(self.partial, ignore_errors=True)
        return False


def _notice(message: str) -> None:
    """Something was skipped: a warning (the CLI prints it unless --quiet)."""
    warnings.warn(message, LadleWarning, stacklevel=3)


def is_manifest_name(name: str) -> bool:
    """ladle's manifest, or a rank's manifest of a distributed merge, or either's
    temporary name (a run killed between creating the partial directory and
    renaming its first manifest into place leaves only that)."""
    name = name.removesuffix(".tmp")
    return name == MANIFEST_NAME or (name.startswith(".ladle-manifest.rank")
                                     and name.endswith(".json"))


def _open_lock_file(path: Path) -> int:
    """Open (creating) the lock file without following a link and without
    blocking; anything but a regular file there is refused, never removed."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    refused = UnsafePathError(f"{path}: the lock path is a symbolic link or not a regular "
                              f"file; ladle does not follow or delete it: remove it yourself")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # never open a device: side effects
            raise refused
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # swapped in since lstat
            raise refused from None
        raise LadleIOError(e.errno, f"{path}: cannot create the lock file: "
                                    f"{e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size:  # ladle's lock files are empty
        os.close(fd)
        raise UnsafePathError(f"{path}: the lock path is not an empty regular file, so not "
                              f"ladle's lock; ladle does not use or delete it: remove it "
                              f"yourself")
    return fd


def _same_file(path: Path, fd: int) -> bool:
    st, own = os.lstat(path), os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def file_crc32c(path: Path) -> str:
    """CRC-32C of a file's bytes as 8 hex digits (hardware CRC in the C++ core)."""
    return f"{_core.file_crc32c(str(path)):08x}"


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise LadleIOError(err, f"{b}: cannot swap in the new output: {os.strerror(err)}")


def checked_output(out: str | os.PathLike, sources: Iterable[object], *,
                   overwrite: bool = False) -> OutputDir:
    """An :class:`OutputDir` for ``out`` made from ``sources`` (paths, Checkpoints,
    tensor sets, live models), checked before any input is read: ``out`` is none
    of the inputs and may be (re)placed."""
    output = OutputDir(out, overwrite=overwrite, inputs=input_paths(sources))
    output.check_destination()
    return output


def write_atomically(output: OutputDir, work: Callable[[OutputDir], T], *,
                     plan_hash: str = "", resume: bool = False) -> tuple[T, Path]:
    """The one way outputs are written: lock the destination, create the partial
    directory, run ``work(output)`` (which fills it: shards, index, extra files),
    then commit. Any failure removes the partial directory; an interrupt keeps
    its finished shards for ``resume``. Returns ``(work's result, dest)``.
    """
    output.check_destination()
    output.lock()
    try:
        output.create(plan_hash, resume=resume)
        try:
            result = work(output)
            return result, output.commit()
        except KeyboardInterrupt:
            output.abort(keep_finished=True)  # finished shards stay for resume=True
            raise
        except BaseException:
            output.abort()
            raise
    finally:
        output.unlock()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
