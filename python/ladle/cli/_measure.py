"""Run a command in a child process and sample its memory: peak RSS (the
kernel's VmHWM) and peak RssAnon (sampled; RSS also counts mapped file pages)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_rss_anon_bytes: int
    stdout: str
    stderr: str


def _status_kib(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def run_measured(cmd: list[str], env: dict[str, str] | None = None,
                 interval_s: float = 0.01) -> Measured:
    """Run ``cmd``; return exit code, wall time and peak memory of the child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak_hwm = peak_anon = 0
    import threading

    out: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        out[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s))
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    while proc.poll() is None:
        s = _status_kib(proc.pid, ("VmHWM", "RssAnon"))
        peak_hwm = max(peak_hwm, s.get("VmHWM", 0))
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        time.sleep(interval_s)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    return Measured(proc.returncode, wall, peak_hwm * 1024, peak_anon * 1024,
                    out.get("stdout", ""), out.get("stderr", ""))
