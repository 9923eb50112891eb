"""Per-tensor overhead: open and merge a checkpoint of N tiny tensors with ladle and
compare with ``safetensors.safe_open`` on the same files.

Each measurement runs in a fresh child process (``memwatch.run_measured``): wall and
CPU seconds of the work itself (imports excluded) and the child's peak RSS and
peak RssAnon (its own heap: RSS less the mapped file pages it touched).

    safe_open        safe_open(a) and list its keys
    ladle.open       ladle.open(a): every tensor's name, dtype, shape, offsets
    safetensors x2   safe_open of both inputs (what a merge must parse at least)
    ladle.merge      ladle.merge([a, b], [0.5, 0.5], out.safetensors), fsynced,
                     checksummed, committed as usual

Ratios are to ``safe_open`` of one file, the issue-14 bound (ladle.open and
ladle.merge within 2x of it), and for ladle.merge also to ``safetensors x2``.

Example (the issue-14 figures, ~1 GB of RAM, a minute or two):
    PYTHONPATH=python python benchmarks/bench_many_tensors.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memwatch import run_measured

_CHILD = r"""
import json, os, resource, sys, time
what, a, b, out = sys.argv[1:5]
if what.startswith("safe"):
    from safetensors import safe_open
else:
    import ladle
t0, c0 = time.perf_counter(), time.process_time()
if what == "safe_open":
    with safe_open(a, "np") as f:
        n = len(f.keys())
elif what == "safetensors x2":
    n = 0
    for path in (a, b):
        with safe_open(path, "np") as f:
            n += len(f.keys())
elif what == "ladle.open":
    n = len(ladle.open(a).tensors)
elif what == "ladle.merge":
    n = ladle.merge([a, b], [0.5, 0.5], out, progress=False).n_tensors
print(json.dumps({"n": n, "seconds": time.perf_counter() - t0,
                  "cpu_seconds": time.process_time() - c0}))
"""

CASES = ("safe_open", "ladle.open", "safetensors x2", "ladle.merge")


def write_tiny_tensors(path: Path, n: int, seed: int) -> None:
    """A safetensors file of ``n`` one-element F32 tensors named ``layers.<i>.weight``."""
    import numpy as np

    from ladle import _core

    entries = [(f"layers.{i}.weight", "F32", [1], 4 * i, 4 * i + 4) for i in range(n)]
    header = _core.serialize_header(entries, [("format", "pt")])
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.random.default_rng(seed).standard_normal(n).astype(np.float32).tobytes())


def measure(n: int, workdir: Path) -> dict[str, dict]:
    """Build the two inputs in ``workdir`` and run every case once; returns
    case -> {seconds, cpu_seconds, peak_rss_bytes}."""
    a, b, out = workdir / "a.safetensors", workdir / "b.safetensors", workdir / "out.safetensors"
    for path, seed in ((a, 0), (b, 1)):
        if not path.exists():
            write_tiny_tensors(path, n, seed)
    import ladle

    env = dict(os.environ)
    package_parent = str(Path(ladle.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    results = {}
    for case in CASES:
        if out.exists():
            out.unlink()
        r = run_measured([sys.executable, "-c", _CHILD, case, str(a), str(b), str(out)], env=env)
        if r["rc"] != 0:
            raise RuntimeError(f"{case} failed: {r['stderr'][-2000:]}")
        child = json.loads(r["stdout"].strip().splitlines()[-1])
        expected = 2 * n if case == "safetensors x2" else n
        if child["n"] != expected:
            raise RuntimeError(f"{case}: saw {child['n']} tensors, expected {expected}")
        results[case] = {"seconds": child["seconds"], "cpu_seconds": child["cpu_seconds"],
                         "peak_rss_bytes": r["peak_rss_bytes"],
                         "peak_rss_anon_bytes": r["peak_rss_anon_bytes"]}
    return results


_MEASURES = ("seconds", "cpu_seconds", "peak_rss_bytes", "peak_rss_anon_bytes")


def report(n: int, results: dict[str, dict]) -> str:
    """A Markdown table: each case's figures, then its ratios (wall, CPU, RSS, RssAnon)
    to ``safe_open`` of one file and, for ladle.merge, to ``safetensors x2``."""
    lines = [f"{n} tensors", "",
             ("| case | wall s | CPU s | peak RSS MiB | peak RssAnon MiB | base "
              "| wall / base | CPU / base | RSS / base | RssAnon / base |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        bases = ["safe_open"] + (["safetensors x2"] if case == "ladle.merge" else [])
        for base in bases:
            ratios = " | ".join(f"{r[k] / max(results[base][k], 1e-9):.2f}" for k in _MEASURES)
            lines.append(f"| {case} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                         f"{r['peak_rss_bytes'] / 2**20:.0f} | "
                         f"{r['peak_rss_anon_bytes'] / 2**20:.0f} | {base} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="tensors per checkpoint")
    parser.add_argument("--workdir", help="where the inputs are written (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        print(report(args.n, measure(args.n, Path(args.workdir))))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(report(args.n, measure(args.n, Path(tmp))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
