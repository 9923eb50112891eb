"""GPU benchmark of the merge methods' CUDA kernels (issue 16): each pass of the
task-vector program (|delta| histograms, tie counts, L1 norms, the per-element
apply), the Gram reduction, SCE (variance histogram, tie counts, sums of
squares, apply) and DELLA (rank, apply), over device-resident bf16 inputs (a base and 3 models), as a
fraction of device-to-device copy bandwidth (bytes read + written; target ≥ 80 %). Then an end-to-end check that every method's output on the GPU is
byte-identical to the CPU engine's. Needs a CUDA GPU and torch; exits 0 with a
message when there is none.

Example:
    python benchmarks/bench_cuda_methods.py --elems 67108864 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import ladle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cuda import _gbps, _time_cuda

# (pass, sparsify, what it is in a method run)
PASSES = [
    ("hist_hi", "rank", "TIES/breadcrumbs statistics 1: high 16 bits of |delta|"),
    ("hist_lo", "rank", "TIES/breadcrumbs statistics 2: low 16 bits in the chosen bin"),
    ("ties", "rank", "tie counts per tile (only when the threshold splits a tie)"),
    ("l1", "random", "DARE L1 rescale: |delta|_1 before/after per tile"),
    ("apply", "rank", "TIES apply: sparsify, elect sign, mix, round"),
    ("apply", "random", "DARE apply: counter-based draw, mix, round"),
    ("gram", "none", "SLERP/model stock Gram sums per tile"),
    ("sce_hist_hi", "none", "SCE statistics 1: high 16 bits of the variance, nonzero count"),
    ("sce_ties", "none", "SCE tie counts per tile"),
    ("sce_squares", "none", "SCE sums of squares of the kept deltas per tile and model"),
    ("sce_apply", "none", "SCE apply: select, erase by sign, weighted mean, round"),
    ("della_rank", "prob", "DELLA keep probabilities: sort each row of 4096 by |delta|"),
    ("apply", "prob", "DELLA apply: draw against the keep probabilities, mix, round"),
]


def bench_passes(torch, n_elems: int, n_models: int, repeat: int) -> None:
    src = torch.empty(n_elems, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy_bw = _gbps(2 * src.nbytes, _time_cuda(torch, lambda: dst.copy_(src), repeat))
    src = dst = None
    print(f"device-to-device copy: {copy_bw:8.1f} GB/s (read + written)")
    from ladle import _cuda

    for name, sparsify, what in PASSES:
        seconds, n_bytes = _cuda.time_method_pass(name, sparsify, n_elems, n_models, "BF16",
                                                  repeat=repeat)
        bw = _gbps(n_bytes, seconds)
        print(f"{name:8s} {sparsify:6s} {bw:8.1f} GB/s = {bw / copy_bw:6.1%} of copy  "
              f"({seconds * 1e3:8.2f} ms; {what})")


def check_methods(workdir: Path) -> bool:
    """Every method on the GPU vs the CPU engine, byte for byte (small models)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_cuda

    paths = test_cuda._method_models(workdir, 3, "BF16")
    ok = True
    for name in test_cuda.METHOD_RUNS:
        cpu, gpu = workdir / f"{name}.cpu.safetensors", workdir / f"{name}.gpu.safetensors"
        test_cuda._run_method(name, paths, cpu, "cpu")
        report = test_cuda._run_method(name, paths, gpu, "cuda")
        same = cpu.read_bytes() == gpu.read_bytes()
        ok = ok and same
        print(f"{name:18s} {'identical' if same else 'DIFFERENT'} ({report.kernel})")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--elems", type=int, default=1 << 26,
                   help="elements per input tensor (bf16; default 64Mi, 128 MiB, far past L2)")
    p.add_argument("--models", type=int, default=3, help="models besides the base")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if not ladle.cuda_available():
        print(f"bench_cuda_methods: no usable CUDA GPU ({ladle.cuda_info()['error']})")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("bench_cuda_methods: torch sees no CUDA device")
        return 0
    bench_passes(torch, args.elems, args.models, args.repeat)
    with tempfile.TemporaryDirectory(prefix="ladle-methods-") as tmp:
        return 0 if check_methods(Path(tmp)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
