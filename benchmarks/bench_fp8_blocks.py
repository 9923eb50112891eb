"""Block-scaled FP8 merge of a ~2 GB checkpoint pair: GB/s and peak RSS/RssAnon of
``ladle merge --alpha 0.5`` written as BF16 (the default, dequantized) and as
``--dtype fp8`` (F8_E4M3 with fresh scales in the input's layout), warm cache,
against the same run's durable I/O ceiling (compare.py's ``cat`` + ``dd conv=fsync``).

Each generated checkpoint holds 16 F8_E4M3 [8192, 8192] weights (random finite
codes) and a config.json with the layout's ``quantization_config`` (1.07 GB):

- ``deepseek``: F32 [64, 64] ``*_scale_inv`` (128x128 blocks), DeepSeek-V3's config;
- ``block``, ``channel``, ``tensor``: compressed-tensors ``*_scale`` of that strategy
  (128x128 blocks [64, 64], per row [8192, 1], one [1]); ``--scale-dtype`` picks their
  dtype. ``tensor`` block rows are whole 64 Mi-element tensors: two passes.

Example:
    python benchmarks/bench_fp8_blocks.py --workdir bench-work/fp8 --repeat 2 \
        --layouts deepseek block --dtypes fp8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare import REPO, dir_bytes, ladle_cmd, remove, run_ceiling, run_tool

QUANT = {"quant_method": "fp8", "weight_block_size": [128, 128], "fmt": "e4m3",
         "activation_scheme": "dynamic"}


LAYOUTS = ("deepseek", "block", "channel", "tensor")


def compressed_config(strategy: str) -> dict:
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
               "strategy": strategy}
    if strategy == "block":
        weights["block_structure"] = [128, 128]
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}


def generate(directory: Path, seed: int, n_tensors: int = 16, side: int = 8192,
             layout: str = "deepseek", scale_dtype: str = "F32") -> Path:
    """One checkpoint of ``layout`` (skipped when already there)."""
    import torch
    from safetensors.torch import save_file

    dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[scale_dtype]
    suffix = "_scale_inv" if layout == "deepseek" else "_scale"
    shape = {"deepseek": (side // 128, side // 128), "block": (side // 128, side // 128),
             "channel": (side, 1), "tensor": (1,)}[layout]

    if (directory / "model.safetensors").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(n_tensors):
        codes = torch.randint(0, 0x7E, (side, side), dtype=torch.uint8, generator=g)
        sign = torch.randint(0, 2, (side, side), dtype=torch.uint8, generator=g) << 7
        tensors[f"layers.{i}.weight"] = (codes | sign).view(torch.float8_e4m3fn)
        tensors[f"layers.{i}.weight{suffix}"] = (torch.rand(shape, generator=g)
                                                 * 1e-2).to(dtype)
    save_file(tensors, str(directory / "model.safetensors"))
    quant = QUANT if layout == "deepseek" else compressed_config(layout)
    (directory / "config.json").write_text(json.dumps({"model_type": "toy",
                                                       "quantization_config": quant}))
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=REPO / "bench-work" / "fp8")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"],
                   help="output dtypes to run (bf16: dequantized; fp8: fresh block scales)")
    p.add_argument("--layouts", nargs="+", default=["deepseek"], choices=LAYOUTS,
                   help="input layouts (deepseek, or a compressed-tensors strategy)")
    p.add_argument("--scale-dtype", default="F32", choices=["F32", "BF16", "F16"],
                   help="dtype of the compressed-tensors scales")
    p.add_argument("--memory-budget", help="ladle's --memory-budget (default: its own)")
    args = p.parse_args(argv)
    results = {}
    for layout in args.layouts:
        tag = layout if layout == "deepseek" else f"{layout}-{args.scale_dtype}"
        inputs = [generate(args.workdir / tag / f"m{k}", k, layout=layout,
                           scale_dtype=args.scale_dtype) for k in range(2)]
        n_read = sum(dir_bytes(i) for i in inputs)
        out = args.workdir / "out"
        budget = ["--memory-budget", args.memory_budget] if args.memory_budget else []
        for dtype in args.dtypes:
            run = run_tool("ladle", [*ladle_cmd(inputs, out), "--dtype", dtype, *budget,
                                     "--quiet"], out, inputs, "warm", args.repeat)
            n_written = dir_bytes(out)
            remove(out)
            ceiling = run_ceiling(inputs, args.workdir / "ceiling.bin", n_written, "warm",
                                  args.repeat)
            moved = n_read + n_written
            results[f"{tag}/{dtype}"] = {
                "bytes_read": n_read, "bytes_written": n_written,
                "ladle_s": run["wall_s"], "ceiling_s": ceiling["wall_s"],
                "ladle_gb_per_s": moved / run["wall_s"] / 1e9,
                "ratio_to_ceiling": ceiling["wall_s"] / run["wall_s"],
                "ladle_peak_rss_bytes": run["peak_rss_bytes"],
                "ladle_peak_rss_anon_bytes": run["peak_rss_anon_bytes"]}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
