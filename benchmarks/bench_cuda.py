"""GPU benchmarks of ladle's CUDA backend (issue 5's figures). Needs a CUDA GPU and
torch; exits 0 with a message when there is none.

1. kernel: fused weighted sum of 2 and 8 bf16 inputs (≥ 1 GiB each) as a
   fraction of measured device-to-device copy bandwidth (bytes read + written),
   next to torch's recipe (x.float()·w + …, back to bf16);
2. merge: end-to-end merge of two on-disk sharded bf16 checkpoints (≥ 5 GB
   each): ladle device="cuda" vs ladle's CPU engine vs plain PyTorch on the GPU
   (load_file → cuda → combine → cpu → save_file);
3. sweep: 21 WiSE-FT α on a ViT-B/32-sized model: GPU-resident DeviceSum (one
   launch per α) vs reloading both state dicts from disk per α (the papers' recipe).

Example:
    python benchmarks/bench_cuda.py --workdir bench-work --merge-size 5GB
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ladle
from ladle.engine._units import parse_size

HERE = Path(__file__).resolve().parent

# ViT-B/32 (CLIP image tower + text tower, ~151M params): the shapes that matter
# for the sweep are the parameter count and tensor count, approximated here.
VIT_B32_LAYERS = 12
VIT_B32_WIDTH = 768


def _gbps(n_bytes: float, seconds: float) -> float:
    return n_bytes / seconds / 1e9


def _time_cuda(torch, fn, repeat: int) -> float:
    """Median seconds of fn() on the GPU (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def bench_kernel(torch, gib: float, repeat: int) -> None:
    n = int(gib * 2**30) // 2  # bf16 elements per input
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t_copy = _time_cuda(torch, lambda: dst.copy_(src), repeat)
    copy_bw = _gbps(2 * src.nbytes, t_copy)
    print(f"device-to-device copy: {copy_bw:8.1f} GB/s (read + written, {src.nbytes / 2**30:.2f} "
          f"GiB)")
    dst = None  # free before the larger allocations
    for k, dtype in ((2, torch.bfloat16), (8, torch.bfloat16), (2, torch.float32)):
        n_elems = src.nbytes // dtype.itemsize  # every input takes the same bytes
        inputs = [torch.empty(n_elems, dtype=dtype, device="cuda").normal_() for _ in range(k)]
        out = torch.empty_like(inputs[0])
        weights = [1.0 / k] * k
        summer = ladle.engine.cuda.DeviceSum([out], *[[x] for x in inputs])
        t = _time_cuda(torch, lambda s=summer, w=weights: s(w), repeat)
        bw = _gbps((k + 1) * src.nbytes, t)

        def recipe(inputs=inputs, weights=weights, out=out):
            acc = inputs[0].float() * weights[0]
            for x, w in zip(inputs[1:], weights[1:]):
                acc = acc + x.float() * w
            out.copy_(acc.to(out.dtype))

        t_torch = _time_cuda(torch, recipe, max(3, repeat // 2))
        bw_torch = _gbps((k + 1) * src.nbytes, t_torch)
        name = str(dtype).removeprefix("torch.")
        print(f"weighted sum, {k} {name} inputs: ladle {bw:8.1f} GB/s = {bw / copy_bw:5.1%} of "
              f"copy (target >= 85%); torch recipe {bw_torch:7.1f} GB/s; speed-up "
              f"x{t_torch / t:.1f}")
        del inputs, out, summer
        torch.cuda.empty_cache()


def _torch_merge_gpu(torch, inputs: list[Path], weights: list[float], out: Path) -> None:
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for shard in sorted(inputs[0].glob("*.safetensors")):
        parts = [load_file(str(p / shard.name), device="cuda") for p in inputs]
        merged = {}
        for name, first in parts[0].items():
            if first.is_floating_point():
                acc = first.float() * weights[0]
                for part, w in zip(parts[1:], weights[1:]):
                    acc = acc + part[name].float() * w
                merged[name] = acc.to(first.dtype).cpu()
            else:
                merged[name] = first.cpu()
        save_file(merged, str(out / shard.name), metadata={"format": "pt"})
        fd = os.open(out / shard.name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def bench_merge(torch, workdir: Path, size: int) -> None:
    sys.path.insert(0, str(HERE))
    from llama_checkpoints import generate_checkpoints

    a, b = generate_checkpoints(workdir / "ckpts", 2, size)
    n_bytes = sum(f.stat().st_size for f in a.glob("*.safetensors"))
    print(f"merge of two sharded bf16 checkpoints of {n_bytes / 1e9:.2f} GB each "
          f"(page cache warm after the first run; figures are read + written / wall time):")
    results = {}
    for label, run in (
        ("ladle cuda", lambda o: ladle.interpolate(a, b, 0.5, o, device="cuda", progress=False)),
        ("ladle cuda 8w", lambda o: ladle.interpolate(a, b, 0.5, o, device="cuda", threads=8,
                                                     progress=False)),
        ("ladle cpu", lambda o: ladle.interpolate(a, b, 0.5, o, progress=False)),
        ("torch gpu", lambda o: _torch_merge_gpu(torch, [a, b], [0.5, 0.5], o)),
    ):
        out = workdir / f"merged-{label.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        run(out)
        results[label] = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        print(f"  {label:<11} {results[label]:7.2f} s  {_gbps(3 * n_bytes, results[label]):6.2f} GB/s")
    print(f"  ladle cuda vs cpu x{results['ladle cpu'] / results['ladle cuda']:.2f}, "
          f"vs torch gpu x{results['torch gpu'] / results['ladle cuda']:.2f}")


def _vit_b32_state(torch, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    w = VIT_B32_WIDTH
    shapes = {"visual.conv1.weight": (w, 3, 32, 32), "visual.positional_embedding": (50, w),
              "token_embedding.weight": (49408, 512), "visual.proj": (w, 512)}
    for tower, width in (("visual.transformer", w), ("transformer", 512)):
        for i in range(VIT_B32_LAYERS):
            p = f"{tower}.resblocks.{i}"
            shapes |= {f"{p}.attn.in_proj_weight": (3 * width, width),
                       f"{p}.attn.in_proj_bias": (3 * width,),
                       f"{p}.attn.out_proj.weight": (width, width),
                       f"{p}.attn.out_proj.bias": (width,),
                       f"{p}.ln_1.weight": (width,), f"{p}.ln_1.bias": (width,),
                       f"{p}.mlp.c_fc.weight": (4 * width, width),
                       f"{p}.mlp.c_fc.bias": (4 * width,),
                       f"{p}.mlp.c_proj.weight": (width, 4 * width),
                       f"{p}.mlp.c_proj.bias": (width,),
                       f"{p}.ln_2.weight": (width,), f"{p}.ln_2.bias": (width,)}
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}


def bench_sweep(torch, workdir: Path) -> None:
    theta0, theta1 = _vit_b32_state(torch, 0), _vit_b32_state(torch, 1)
    n_params = sum(t.numel() for t in theta0.values())
    paths = [workdir / "vit0.pt", workdir / "vit1.pt"]
    for p, s in zip(paths, (theta0, theta1)):
        torch.save(s, p)
    alphas = [i / 20 for i in range(21)]
    live = {k: torch.empty_like(v, device="cuda") for k, v in theta0.items()}
    # Papers' recipe: per α, load both state dicts, combine, load into the model.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for alpha in alphas:
        s0, s1 = (torch.load(p, map_location="cpu") for p in paths)
        merged = {k: (1 - alpha) * s0[k] + alpha * s1[k] for k in s0}
        for k, v in merged.items():
            live[k].copy_(v)
    torch.cuda.synchronize()
    t_reload = time.perf_counter() - t0
    # GPU-resident: endpoints stay on the GPU, one launch per α into the live tensors.
    g0 = {k: v.cuda() for k, v in theta0.items()}
    g1 = {k: v.cuda() for k, v in theta1.items()}
    wise = ladle.engine.cuda.DeviceSum(live, g0, g1)
    wise.interpolate(0.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for alpha in alphas:
        wise.interpolate(alpha)
        torch.cuda.synchronize()  # each α is evaluated before the next
    t_resident = time.perf_counter() - t0
    print(f"WiSE-FT sweep, 21 alphas, ViT-B/32-sized ({n_params / 1e6:.0f}M fp32 params, "
          f"{len(theta0)} tensors): GPU-resident {t_resident * 1e3:.2f} ms "
          f"({t_resident / 21 * 1e3:.3f} ms/alpha), reloading state dicts {t_reload:.2f} s; "
          f"x{t_reload / t_resident:.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None, help="checkpoints go here (default tmp)")
    p.add_argument("--kernel-gib", type=float, default=1.0, help="GiB per kernel input (>= 1)")
    p.add_argument("--merge-size", default="5GB", help="size of each merged checkpoint")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--only", choices=["kernel", "merge", "sweep"], action="append")
    args = p.parse_args(argv)
    if not ladle.cuda_available():
        print(f"bench_cuda: no usable CUDA GPU, nothing to measure ({ladle.cuda_info()['error']})")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("bench_cuda: torch sees no CUDA device; install a CUDA build of torch")
        return 0
    info = ladle.cuda_info()
    dev = info["devices"][0]
    print(f"GPU: {dev['name']} (sm_{dev['compute_capability'][0]}{dev['compute_capability'][1]}, "
          f"{dev['total_n_bytes'] / 2**30:.0f} GiB), driver {info['driver_version']}, "
          f"ladle runtime {info['runtime_version']}, torch {torch.__version__}, "
          f"CPU threads {os.cpu_count()}")
    only = set(args.only or ["kernel", "merge", "sweep"])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ladle-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if "kernel" in only:
        bench_kernel(torch, args.kernel_gib, args.repeat)
    if "merge" in only:
        bench_merge(torch, workdir, parse_size(args.merge_size))
    if "sweep" in only:
        bench_sweep(torch, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
