"""Crash-safe output layout: everything is written into ``<dest>.ladle-partial/``
beside the destination and moved into place only once complete and fsynced.
A failed run removes its partial directory; the destination is never touched
until the final rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import LadleIOError, LadleValueError

PARTIAL_SUFFIX = ".ladle-partial"
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
        self.overwrite = overwrite

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

    def create(self) -> Path:
        """Create a fresh partial directory (a stale one is removed first)."""
        self.check_destination()
        with os_errors(f"{self.partial}: cannot create the partial output directory"):
            if self.partial.exists():
                shutil.rmtree(self.partial)
            self.partial.mkdir()
        return self.partial

    def shard_path(self, file_name: str) -> Path:
        return self.partial / file_name

    def write_index(self, weight_map: dict[str, str], total_size: int) -> None:
        data = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
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
        """Move the finished output into place; the old destination goes last."""
        with os_errors(f"{self.dest}: cannot move the finished output into place"):
            return self._commit()

    def _commit(self) -> Path:
        _fsync_dir(self.partial)
        if self.single_file:
            files = list(self.partial.iterdir())
            if len(files) != 1:
                raise LadleValueError(f"{self.partial}: expected one file, found {len(files)}")
            os.replace(files[0], self.dest)  # atomic, replaces an old file
            self.partial.rmdir()
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

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


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
