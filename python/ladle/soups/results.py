"""Append-only JSONL log of every evaluation a soup or sweep makes: method,
ingredients, weights, scores and timing, one JSON object per line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class ResultsLog:
    """Appends one JSON line per evaluation; a ``None`` path keeps records in memory only.

    Args:
        path: the ``.jsonl`` file to append to (created with its parent directory).

    Example:
        >>> log = ResultsLog(None)
        >>> log.append("greedy-soup", ingredients=["a"], weights=[1.0], score=0.5)["score"]
        0.5
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, method: str, **fields: Any) -> dict[str, Any]:
        """Record one evaluation; returns the record written."""
        record = {"time": time.time(), "method": method, **fields}
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=_plain) + "\n")
        return record


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def as_log(log: ResultsLog | str | os.PathLike | None) -> ResultsLog:
    """A :class:`ResultsLog` from a log, a path or None."""
    return log if isinstance(log, ResultsLog) else ResultsLog(log)
