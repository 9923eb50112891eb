"""Pause Python's cyclic garbage collector while building many small acyclic
objects: a checkpoint with 10^6 tensors means millions of tuples, dicts and
plan entries, and every automatic collection would rescan all of them again
(measured on 10^6 tensors: building the plan took 2.8x longer with it running).
Nothing built there holds a reference cycle, so nothing is leaked meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Self


class bulk_objects(contextlib.ContextDecorator):
    """Context manager / decorator: no automatic GC passes inside (nests)."""

    def _recreate_cm(self) -> bulk_objects:  # a fresh state per use (recursion, threads)
        return bulk_objects()

    def __enter__(self) -> Self:
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            gc.enable()
