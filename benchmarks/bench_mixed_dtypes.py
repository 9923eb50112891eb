"""WiSE-FT of an fp16 checkpoint with an fp32 one (the CLIP zero-shot + fine-tuned case)
against the same run's durable I/O ceiling (``cat`` the inputs + ``dd conv=fsync`` the
output size), with compare.py's measuring tools.

Two Llama-shaped bf16 checkpoints are generated, converted by ladle to F16 and F32
(same parameters: the F32 one is twice the bytes), then merged warm-cache with
``ladle merge zs16 ft32 --alpha 0.5`` (output F32, the widest input dtype).

Example:
    python benchmarks/bench_mixed_dtypes.py --size 1GB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from compare import REPO, child_env, dir_bytes, ladle_cmd, remove, run_ceiling, run_tool
from llama_checkpoints import generate_checkpoints

from ladle.engine._units import parse_size


def convert(src: Path, dst: Path, dtype: str) -> Path:
    if not dst.exists():
        subprocess.run([sys.executable, "-m", "ladle", "merge", str(src), "--weights", "1",
                        "--dtype", dtype, "-o", str(dst), "--quiet"], check=True,
                       env=child_env())
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1GB", help="size of each generated bf16 checkpoint")
    p.add_argument("--workdir", type=Path, default=REPO / "bench-work" / "mixed")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    bf16 = generate_checkpoints(args.workdir / "bf16", 2, parse_size(args.size))
    inputs = [convert(bf16[0], args.workdir / "zs16", "f16"),
              convert(bf16[1], args.workdir / "ft32", "f32")]
    out = args.workdir / "out"
    ladle_run = run_tool("ladle", ladle_cmd(inputs, out), out, inputs, "warm", args.repeat)
    n_read = sum(dir_bytes(i) for i in inputs)
    n_written = dir_bytes(out)
    remove(out)
    ceiling = run_ceiling(inputs, args.workdir / "ceiling.bin", n_written, "warm", args.repeat)
    moved = n_read + n_written
    result = {"bytes_read": n_read, "bytes_written": n_written,
              "ladle_s": ladle_run["wall_s"], "ceiling_s": ceiling["wall_s"],
              "ladle_gb_per_s": moved / ladle_run["wall_s"] / 1e9,
              "ceiling_gb_per_s": moved / ceiling["wall_s"] / 1e9,
              "ratio_to_ceiling": ceiling["wall_s"] / ladle_run["wall_s"],
              "ladle_peak_rss_bytes": ladle_run["peak_rss_bytes"]}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
