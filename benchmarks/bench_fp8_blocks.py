"""Block-scaled FP8 merge of a ~2 GB DeepSeek-layout checkpoint pair: GB/s and peak
RSS of ``ladle merge --alpha 0.5`` written as BF16 (the default, dequantized) and
as ``--dtype fp8`` (F8_E4M3 with fresh 128x128 block scales), warm cache, against
the same run's durable I/O ceiling (compare.py's ``cat`` + ``dd conv=fsync``).

Each generated checkpoint holds 16 F8_E4M3 [8192, 8192] weights (random finite
codes) with F32 [64, 64] ``*_scale_inv`` blocks and a config.json whose
``quantization_config`` is DeepSeek-V3's (1.07 GB).

Example:
    python benchmarks/bench_fp8_blocks.py --workdir bench-work/fp8 --repeat 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare import REPO, dir_bytes, ladle_cmd, remove, run_ceiling, run_tool

QUANT = {"quant_method": "fp8", "weight_block_size": [128, 128], "fmt": "e4m3",
         "activation_scheme": "dynamic"}


def generate(directory: Path, seed: int, n_tensors: int = 16, side: int = 8192) -> Path:
    """One DeepSeek-layout checkpoint (skipped when already there)."""
    import torch
    from safetensors.torch import save_file

    if (directory / "model.safetensors").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(n_tensors):
        codes = torch.randint(0, 0x7E, (side, side), dtype=torch.uint8, generator=g)
        sign = torch.randint(0, 2, (side, side), dtype=torch.uint8, generator=g) << 7
        tensors[f"layers.{i}.weight"] = (codes | sign).view(torch.float8_e4m3fn)
        tensors[f"layers.{i}.weight_scale_inv"] = torch.rand(side // 128, side // 128,
                                                             generator=g) * 1e-2
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "toy",
                                                       "quantization_config": QUANT}))
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=REPO / "bench-work" / "fp8")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"],
                   help="output dtypes to run (bf16: dequantized; fp8: fresh block scales)")
    args = p.parse_args(argv)
    inputs = [generate(args.workdir / f"m{k}", k) for k in range(2)]
    n_read = sum(dir_bytes(i) for i in inputs)
    out = args.workdir / "out"
    results = {}
    for dtype in args.dtypes:
        run = run_tool("ladle", [*ladle_cmd(inputs, out), "--dtype", dtype, "--quiet"], out,
                       inputs, "warm", args.repeat)
        n_written = dir_bytes(out)
        remove(out)
        ceiling = run_ceiling(inputs, args.workdir / "ceiling.bin", n_written, "warm",
                              args.repeat)
        moved = n_read + n_written
        results[dtype] = {"bytes_read": n_read, "bytes_written": n_written,
                          "ladle_s": run["wall_s"], "ceiling_s": ceiling["wall_s"],
                          "ladle_gb_per_s": moved / run["wall_s"] / 1e9,
                          "ratio_to_ceiling": ceiling["wall_s"] / run["wall_s"],
                          "ladle_peak_rss_bytes": run["peak_rss_bytes"]}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
