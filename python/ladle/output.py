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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from . import _core
from .errors import LadleIOError, LadleValueError

T = TypeVar("T")
PARTIAL_SUFFIX = ".ladle-partial"
LOCK_SUFFIX = ".ladle-lock"
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
    """

    def __init__(self, dest: str | os.PathLike, overwrite: bool = False):
        self.dest = Path(dest)
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
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise LadleIOError(e.errno, f"{self.lock_path}: cannot create the lock file: "
                                            f"{e.strerror}") from None
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
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = -1

    def check_destination(self) -> None:
        """Refuse an existing destination unless ``overwrite``; check the parent."""
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
        if self.partial.is_symlink() or self.partial.is_file():
            self.partial.unlink()
        elif self.partial.exists():
            shutil.rmtree(self.partial)
        with os_errors(f"{self.partial}: cannot create the partial output directory"):
            self.partial.mkdir()
            self._write_manifest()
        return self.partial

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

    def record_shard(self, file_name: str) -> None:
        """Checksum a finished, fsynced shard and record it in the manifest."""
        path = self.partial / file_name
        self.finished[file_name] = {"n_bytes": path.stat().st_size, "crc32c": file_crc32c(path)}
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

    def copy_extra_files(self, files: list[Path]) -> None:
        """Copy config/tokenizer files of the first input (directory outputs only)."""
        if self.single_file:
            return
        for src in files:
            dst = self.partial / src.name
            with os_errors(f"{dst}: cannot copy {src}"):
                shutil.copyfile(src, dst)
                _fsync_file(dst)

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
            backup = self.dest.with_name(self.dest.name + ".ladle-old")
            if backup.exists():
                shutil.rmtree(backup)
            os.rename(self.dest, backup)
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
