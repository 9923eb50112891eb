"""Every merge method against the same-run durable I/O ceiling (and mergekit when
installed), base + 3 Llama-shaped bf16 checkpoints, the same bytes in one run.

Per method: ladle's wall time (process start until the output is fsynced), the
ceiling of the same traffic (``cat`` of the method's inputs + ``dd conv=fsync`` of an
output-sized file, as benchmarks/compare.py measures it), ladle's fraction of it,
peak RSS (VmHWM, mapped file pages included) and peak RssAnon, and mergekit's wall
when ``mergekit-yaml`` is on PATH (the column reads "-" otherwise; with it, the largest
absolute difference between the two outputs is recorded too). Every tool runs
``--repeat`` times with the inputs warm in the page cache; the median wall and the
largest peaks are printed.

Recipes use ``dtype: float32`` (compute in fp32) and ``out_dtype: bfloat16``.

Usage:
    python benchmarks/bench_methods.py --size 0.5GB --repeat 3 --json bench-work/methods.json
    # a CPU without AVX-512, on one that has it:
    python benchmarks/bench_methods.py --kernel avx2 --methods dare_ties model_stock
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml
from compare import child_env, dir_bytes, remove, run_ceiling, run_tool
from llama_checkpoints import checkpoint_files, generate_checkpoints

from ladle.engine._units import format_size, parse_size

METHODS = ("linear", "ties", "dare_ties", "breadcrumbs", "slerp", "model_stock",
           "model_stock_filter_wise", "nuslerp", "nearswap", "della", "della_linear",
           "sce", "multislerp", "karcher", "arcee_fusion", "nuslerp_row_wise")


def recipe(method: str, base: Path, models: list[Path]) -> tuple[dict, list[Path]]:
    """The mergekit YAML recipe of ``method`` and the checkpoints it reads."""
    common = {"dtype": "float32", "out_dtype": "bfloat16"}
    if method == "linear":
        paths = [base, *models]
        return ({**common, "merge_method": "linear",
                 "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in paths]},
                paths)
    if method == "slerp":
        return ({**common, "merge_method": "slerp", "base_model": str(base),
                 "models": [{"model": str(base)}, {"model": str(models[0])}],
                 "parameters": {"t": [0.1, 0.5, 0.9]}}, [base, models[0]])
    if method.startswith("nuslerp"):
        columns = ({"parameters": {"nuslerp_row_wise": True, "nuslerp_flatten": False}}
                   if method.endswith("row_wise") else {})
        return ({**common, "merge_method": "nuslerp", "base_model": str(base),
                 "models": [{"model": str(p), "parameters": {"weight": w}}
                            for p, w in zip(models[:2], (1.0, 0.5))], **columns},
                [base, *models[:2]])
    if method == "multislerp":
        return ({**common, "merge_method": "multislerp", "base_model": str(base),
                 "models": [{"model": str(p), "parameters": {"weight": w}}
                            for p, w in zip(models, (1.0, 0.5, 0.25))]}, [base, *models])
    if method == "karcher":
        return ({**common, "merge_method": "karcher",
                 "models": [{"model": str(p)} for p in models],
                 "parameters": {"max_iter": 10}}, list(models))
    if method == "arcee_fusion":
        return ({**common, "merge_method": "arcee_fusion", "base_model": str(base),
                 "models": [{"model": str(models[0])}]}, [base, models[0]])
    if method == "nearswap":
        return ({**common, "merge_method": "nearswap", "base_model": str(base),
                 "models": [{"model": str(models[0])}], "parameters": {"t": 0.001}},
                [base, models[0]])
    if method == "sce":
        return ({**common, "merge_method": "sce", "base_model": str(base),
                 "models": [{"model": str(p)} for p in models],
                 "parameters": {"select_topk": 0.5}}, [base, *models])
    if method.startswith("model_stock"):
        return ({**common, "merge_method": "model_stock", "base_model": str(base),
                 "models": [{"model": str(p)} for p in models],
                 "parameters": {"filter_wise": method.endswith("filter_wise")}},
                [base, *models])
    params = {"weight": 1.0, "density": 0.5}
    if method == "breadcrumbs":
        params = {"weight": 1.0, "density": 0.9, "gamma": 0.01}
    return ({**common, "merge_method": method, "base_model": str(base),
             "models": [{"model": str(p), "parameters": params} for p in models],
             "parameters": {"normalize": True}}, [base, *models])


def max_abs_diff(x_dir: Path, y_dir: Path) -> tuple[float, int, int]:
    """(max |x − y|, elements differing by more than 1 bf16 ulp, elements), tensor by tensor."""
    import torch
    from safetensors import safe_open

    def index(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                out.update(dict.fromkeys(h.keys(), f))
        return out

    xi, yi = index(x_dir), index(y_dir)
    if set(xi) != set(yi):
        raise SystemExit(f"tensor names differ: {sorted(set(xi) ^ set(yi))[:5]}")
    worst, beyond, total = 0.0, 0, 0
    for name in xi:
        with safe_open(xi[name], "pt") as fx, safe_open(yi[name], "pt") as fy:
            x = fx.get_tensor(name).float()
            y = fy.get_tensor(name).float()
        d = (x - y).abs()
        worst = max(worst, float(d.max()))
        ulp = torch.clamp(torch.maximum(x.abs(), y.abs()), min=1e-30) * 2.0**-7
        beyond += int((d > ulp).sum())
        total += x.numel()
    return worst, beyond, total


def run_method(method: str, base: Path, models: list[Path], work: Path, repeat: int,
               threads: int, memory_budget: str, kernel: str = "auto") -> dict:
    """ladle, the ceiling and (when installed) mergekit for one method."""
    cfg_dict, inputs = recipe(method, base, models)
    cfg = work / f"{method}.yml"
    cfg.write_text(yaml.safe_dump(cfg_dict))
    out = work / f"out-ladle-{method}"
    ladle = run_tool("ladle", [sys.executable, "-m", "ladle", "merge", "--config", str(cfg),
                               "-o", str(out), "--quiet", "--threads", str(threads),
                               "--memory-budget", memory_budget, "--kernel", kernel],
                   out, inputs, "warm", repeat)
    if not ladle["ok"]:
        raise SystemExit(f"ladle {method} failed")
    n_out = dir_bytes(out)
    ceiling = run_ceiling(inputs, work / f"out-ceiling-{method}", n_out, "warm", repeat)
    entry = {"inputs": len(inputs), "output_bytes": n_out,
             "ladle_s": ladle["wall_s"], "ceiling_s": ceiling["wall_s"],
             "ladle_runs_s": [r["wall_s"] for r in ladle["runs"]],
             "peak_rss_mib": ladle["peak_rss_bytes"] >> 20,
             "peak_rss_anon_mib": ladle["peak_rss_anon_bytes"] >> 20,
             "of_ceiling": ceiling["wall_s"] / ladle["wall_s"], "mergekit_s": None}
    exe = shutil.which("mergekit-yaml")
    if exe is not None:
        mk_out = work / f"out-mergekit-{method}"
        mk = run_tool("mergekit", ["sh", "-c", f'"{exe}" "$1" "$2" && sync -f "$2"/*',
                                   "sh", str(cfg), str(mk_out)], mk_out, inputs, "warm", repeat)
        entry["mergekit_s"] = mk["wall_s"] if mk["ok"] else None
        if mk["ok"]:
            worst, beyond, total = max_abs_diff(out, mk_out)
            entry.update(max_abs_diff=worst, elements_beyond_1_bf16_ulp=beyond, elements=total)
        remove(mk_out)
    remove(out)
    return entry


def format_table(runs: dict[str, dict], budget: int) -> str:
    """One row per method: walls, fraction of the ceiling, peak memory."""
    header = (f"{'method':<24}{'ladle s':>9}{'ceiling s':>11}{'of ceil':>9}{'mergekit s':>12}"
              f"{'peak RSS':>10}{'RssAnon':>9}  (MiB; budget {budget >> 20} MiB)")
    lines = [header]
    for method, r in runs.items():
        mk = f"{r['mergekit_s']:.2f}" if r["mergekit_s"] is not None else "-"
        lines.append(f"{method:<24}{r['ladle_s']:>9.2f}{r['ceiling_s']:>11.2f}"
                     f"{r['of_ceiling']:>8.2f}x{mk:>12}{r['peak_rss_mib']:>10}"
                     f"{r['peak_rss_anon_mib']:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="0.5GB", help="approximate size of each checkpoint")
    p.add_argument("--workdir", type=Path,
                   default=Path(__file__).resolve().parents[1] / "bench-work" / "methods")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--repeat", type=int, default=3, help="runs per tool (median wall)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--memory-budget", default="256MiB")
    p.add_argument("--kernel", default="auto",
                   help="ladle's CPU kernels (auto, scalar, avx2, avx512): e.g. avx2 shows a "
                        "CPU without AVX-512 on one that has it")
    p.add_argument("--json", type=Path, help="write all results here")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size)
    print(f"generating/reusing 4 checkpoints of ~{format_size(size)} in {args.workdir}",
          flush=True)
    base, *models = generate_checkpoints(args.workdir / "inputs", 4, size)
    if shutil.which("mergekit-yaml") is None:
        print("note: mergekit-yaml not installed; the mergekit column is skipped")
    child_env()  # fails early when ladle is not importable
    runs = {}
    for method in args.methods:
        runs[method] = run_method(method, base, models, args.workdir, args.repeat,
                                  args.threads, args.memory_budget, args.kernel)
        print(f"{method}: ladle {runs[method]['ladle_s']:.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for s in runs[method]['ladle_runs_s'])}), "
              f"ceiling {runs[method]['ceiling_s']:.2f} s", flush=True)
    budget = parse_size(args.memory_budget)
    print(format_table(runs, budget))
    result = {"size": size, "kernel": args.kernel,
              "input_bytes": sum(f.stat().st_size for f in checkpoint_files(base)),
              "repeat": args.repeat, "memory_budget": budget, "runs": runs,
              "median_of_ceiling": statistics.median(r["of_ceiling"] for r in runs.values())}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
