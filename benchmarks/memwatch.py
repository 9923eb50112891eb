"""Run a command in a child process and sample its memory (Linux ``/proc``).

Peak RSS and peak RssAnon are the maxima over samples taken every ~10 ms of the sums
over the child and all its descendants (so ``sh -c`` wrappers count what they start).
Peak RSS is also raised to the largest ``VmHWM`` (the kernel's exact per-process RSS
high-water mark) seen, so a spike between two samples is not missed. (``ru_maxrss`` from
``wait4`` is not used: it inherits the parent's size at fork.) Summed RSS counts pages
that forked workers share with their parent once per process; peak PSS (the sum of
``Pss`` from ``smaps_rollup``, shared pages divided among their users) is the tree's
actual footprint and is reported next to it.

Example:
    >>> r = run_measured(["python", "-c", "x = bytearray(10**8)"])
    >>> r["peak_rss_anon_bytes"] > 10**8
    True
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

_PROC = Path("/proc")


def _status_bytes(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, VmHWM) of one process in bytes; zeros once it has gone."""
    values = {"VmRSS:": 0, "RssAnon:": 0, "VmHWM:": 0}
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return 0, 0, 0
    for line in text.splitlines():
        key = line[:line.find(":") + 1]
        if key in values:
            values[key] = int(line.split()[1]) * 1024
    return values["VmRSS:"], values["RssAnon:"], values["VmHWM:"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _pss_bytes(pid: int) -> int:
    """Proportional set size of one process in bytes; 0 once it has gone."""
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_pss(pid: int) -> int:
    """PSS summed over ``pid`` and its descendants, in bytes."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            total += _pss_bytes(p)
            todo += _children(p)
    return total


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS, RssAnon) summed over ``pid`` and its descendants, and their largest VmHWM,
    in bytes."""
    rss = anon = hwm = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r, a, h = _status_bytes(p)
        rss, anon, hwm = rss + r, anon + a, max(hwm, h)
        todo += _children(p)
    return rss, anon, hwm


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 interval_s: float = 0.01, timeout_s: float | None = None,
                 pss: bool = False) -> dict:
    """Run ``cmd``, sampling its memory until it exits.

    Args:
        cmd: the command and its arguments.
        env: environment for the child (default: inherit).
        cwd: working directory for the child.
        interval_s: sampling period.
        timeout_s: kill the child (and report rc -9) after this many seconds.
        pss: also sample the tree's PSS (``peak_pss_bytes``; slower samples).

    Returns:
        dict(rc, wall_s, peak_rss_bytes, peak_rss_anon_bytes, peak_pss_bytes, stdout,
        stderr) (``peak_pss_bytes`` 0 unless ``pss``).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        peak_rss = peak_anon = peak_pss = 0
        while True:
            rss, anon, hwm = tree_memory(proc.pid)
            peak_rss, peak_anon = max(peak_rss, rss, hwm), max(peak_anon, anon)
            if pss:
                peak_pss = max(peak_pss, tree_pss(proc.pid))
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                proc.kill()
            time.sleep(interval_s)
        wall_s = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above by waitpid
        out.seek(0)
        err.seek(0)
        return {
            "rc": proc.returncode,
            "wall_s": wall_s,
            "peak_rss_bytes": peak_rss,
            "peak_rss_anon_bytes": peak_anon,
            "peak_pss_bytes": peak_pss,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }
