"""Scaling of a distributed merge: 1 process vs N torch.distributed ranks (gloo, one
machine). ``python benchmarks/bench_distributed.py --size 600MB --ranks 1 2``.

Generates three bf16 checkpoints (warm in the page cache after the first run),
merges them with 0.5/0.25/0.25 into 8+ shards, and prints wall time and GB/s
((read + written) / s) for a single process (all threads) and for each rank count
(threads split between ranks), plus each rank's share of the input bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ladle
from ladle.engine._units import parse_size

WORKER = """
import json, os, sys, time, ladle
job = json.loads(open(sys.argv[1]).read())
t0 = time.perf_counter()
r = ladle.merge(job["inputs"], [0.5, 0.25, 0.25], job["out"], max_shard_size=job["shard"],
                threads=job["threads"], progress=False, distributed=True)
if os.environ["RANK"] == "0":
    print(json.dumps({"seconds": r.seconds, "read": r.bytes_read, "written": r.bytes_written,
                      "rank_bytes_read": r.rank_bytes_read}))
"""


def make_inputs(workdir: Path, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    n_tensors, paths = 16, []
    rows = max(1, size // n_tensors // (4096 * 2))
    for k in range(3):
        d = workdir / f"in{k}"
        if not d.exists():
            d.mkdir(parents=True)
            tensors = {f"layers.{i}.weight": (rng.standard_normal((rows, 4096), np.float32)
                                              .view(np.uint32) >> 16).astype(np.uint16)
                       for i in range(n_tensors)}
            import torch

            ladle.save({n: torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
                        for n, v in tensors.items()}, d / "model.safetensors")
        paths.append(str(d))
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="600MB", help="size of each input checkpoint")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ladle-dist-bench-"))
    size = parse_size(args.size)
    inputs = make_inputs(workdir, size)
    shard = max(1, size // 8)
    cores = os.cpu_count() or 1
    out = workdir / "out"
    rows = []
    for _ in range(args.repeat):  # single process, all cores
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        r = ladle.merge(inputs, [0.5, 0.25, 0.25], out, max_shard_size=shard, progress=False,
                        distributed=False)
        rows.append(("single process", cores, time.perf_counter() - t0,
                     r.bytes_read + r.bytes_written, [r.bytes_read]))
    script = workdir / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(ladle.__file__).resolve().parent.parent)}
    for n in args.ranks:
        job = workdir / "job.json"
        job.write_text(json.dumps({"inputs": inputs, "out": str(out), "shard": shard,
                                   "threads": max(1, cores // n)}))
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                                   f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
                                   f"--master_port={free_port()}", str(script), str(job)],
                                  env=env, capture_output=True, text=True, check=True)
            rep = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((f"{n} rank(s)", max(1, cores // n), rep["seconds"],
                         rep["read"] + rep["written"], rep["rank_bytes_read"]))
    print(f"{cores} cores, 3 inputs of {size / 1e9:.2f} GB bf16, shards of {shard / 1e6:.0f} MB")
    print(f"{'run':<16}{'threads/rank':>13}{'seconds':>9}{'GB/s':>7}  input bytes per rank")
    for name, threads, secs, moved, per_rank in rows:
        share = ", ".join(f"{b / sum(per_rank):.2f}" for b in per_rank)
        print(f"{name:<16}{threads:>13}{secs:>9.2f}{moved / secs / 1e9:>7.2f}  {share}")


if __name__ == "__main__":
    main()
