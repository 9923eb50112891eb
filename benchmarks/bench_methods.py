"""TIES and SLERP of ~2.5 GB bf16 Llama-shaped checkpoints: ladle vs mergekit on the
same bytes in one run — wall time, peak RSS (VmHWM; it counts mapped file pages too)
and the largest absolute difference between the two outputs.

Both tools get the same mergekit YAML recipe with ``dtype: float32`` (compute in
fp32) and ``out_dtype: bfloat16``. mergekit runs from the Python named by
``--mergekit-python`` (default: /tmp/venv-mergekit/bin/python); it is skipped when
that has no mergekit.

Usage:
    python benchmarks/bench_methods.py --size 2.5GB --workdir bench-work [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from ladle._measure import run_measured
from ladle._units import parse_size
from ladle.synthetic import llama_shape_for, write_llama_checkpoint


def recipes(base: Path, a: Path, b: Path) -> dict[str, dict]:
    common = {"base_model": str(base), "dtype": "float32", "out_dtype": "bfloat16"}
    return {
        "ties": {**common, "merge_method": "ties",
                 "models": [{"model": str(a), "parameters": {"weight": 0.6, "density": 0.5}},
                            {"model": str(b), "parameters": {"weight": 0.8, "density": 0.5}}],
                 "parameters": {"normalize": True}},
        "slerp": {**common, "merge_method": "slerp",
                  "models": [{"model": str(base)}, {"model": str(a)}],
                  "parameters": {"t": [0.1, 0.5, 0.9]}},
    }


def max_abs_diff(x_dir: Path, y_dir: Path) -> tuple[float, int, int]:
    """(max |x − y|, elements differing by more than 1 bf16 ulp, elements) tensor by tensor."""
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="2.5GB")
    p.add_argument("--workdir", default=str(ROOT / "bench-work"))
    p.add_argument("--mergekit-python", default="/tmp/venv-mergekit/bin/python")
    p.add_argument("--methods", nargs="+", default=["ties", "slerp"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape = llama_shape_for(parse_size(args.size))
    dirs = [write_llama_checkpoint(work / name, shape, seed=s)
            for name, s in (("base", 1), ("ft-a", 2), ("ft-b", 3))]
    mk = Path(args.mergekit_python)
    has_mergekit = mk.exists() and subprocess.run(
        [str(mk), "-c", "import mergekit.merge"], check=False,
        capture_output=True).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "HF_HUB_OFFLINE": "1"}
    results = {"size": args.size, "shape": shape.__dict__, "params": shape.n_params(),
               "cores": os.cpu_count(), "runs": {}}
    for method, recipe in recipes(*dirs).items():
        if method not in args.methods:
            continue
        cfg = work / f"{method}.yml"
        cfg.write_text(yaml.safe_dump(recipe))
        out_l, out_m = work / f"out-ladle-{method}", work / f"out-mergekit-{method}"
        for d in (out_l, out_m):
            shutil.rmtree(d, ignore_errors=True)
        r = run_measured([sys.executable, "-m", "ladle", "merge", "--config", str(cfg), "-o",
                          str(out_l), "--quiet", "--threads", str(args.threads)], env=env)
        if r.returncode != 0:
            raise SystemExit(f"ladle failed: {r.stderr[-2000:]}")
        entry = {"ladle": {"wall_s": round(r.wall_s, 2), "peak_rss_mib": r.peak_rss_bytes >> 20,
                           "peak_rss_anon_mib": r.peak_rss_anon_bytes >> 20}}
        print(f"{method}: ladle {r.wall_s:.1f} s, peak RSS {r.peak_rss_bytes >> 20} MiB "
              f"(anon {r.peak_rss_anon_bytes >> 20} MiB)", flush=True)
        if has_mergekit:
            tool = mk.parent / "mergekit-yaml"
            m = run_measured([str(tool), str(cfg), str(out_m)], env=env)
            if m.returncode != 0:
                raise SystemExit(f"mergekit failed: {m.stderr[-2000:]}")
            worst, beyond, total = max_abs_diff(out_l, out_m)
            entry["mergekit"] = {"wall_s": round(m.wall_s, 2),
                                 "peak_rss_mib": m.peak_rss_bytes >> 20,
                                 "peak_rss_anon_mib": m.peak_rss_anon_bytes >> 20}
            entry["max_abs_diff"] = worst
            entry["elements_beyond_1_bf16_ulp"] = beyond
            entry["elements"] = total
            print(f"{method}: mergekit {m.wall_s:.1f} s, peak RSS {m.peak_rss_bytes >> 20} MiB "
                  f"(anon {m.peak_rss_anon_bytes >> 20} MiB); max |diff| {worst:.3g}, "
                  f"{beyond}/{total} elements beyond 1 bf16 ulp", flush=True)
        results["runs"][method] = entry
        for d in (out_l, out_m):
            shutil.rmtree(d, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if not args.keep:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
