"""``ladle demo``: the main job on a built-in default, with no downloads.

Generates two Llama-shaped sharded bf16 checkpoints, WiSE-FT-interpolates them
(α = 0.5) and soups them with the ``ladle`` CLI in child processes, verifies
every output tensor bit for bit against a plain-PyTorch reference, and prints
throughput and peak memory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..engine._units import format_size
from ._measure import run_measured


def run_demo(workdir: Path, size_bytes: int, alpha: float = 0.5) -> int:
    from ..formats.synthetic import llama_shape_for, write_llama_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    shape = llama_shape_for(size_bytes)
    print(f"[1/4] generating two Llama-shaped bf16 checkpoints ({shape.n_layers} layers, "
          f"hidden {shape.hidden}, {format_size(2 * shape.n_params())} each) in {workdir}")
    theta0 = write_llama_checkpoint(workdir / "theta0", shape, seed=0)
    theta1 = write_llama_checkpoint(workdir / "theta1", shape, seed=1)
    _drop_outputs(workdir)

    cli = [sys.executable, "-m", "ladle"]
    jobs = [
        (f"wise-ft alpha={alpha}", workdir / "wiseft",
         cli + ["merge", str(theta0), str(theta1), "--alpha", str(alpha)]),
        ("uniform soup", workdir / "soup", cli + ["soup", str(theta0), str(theta1)]),
    ]
    rows = []
    for i, (label, out, cmd) in enumerate(jobs, start=2):
        print(f"[{i}/4] ladle {label}: {' '.join(cmd[2:])} -o {out}")
        m = run_measured(cmd + ["-o", str(out), "--quiet", "--overwrite"], env=_child_env())
        if m.returncode != 0:
            print(m.stderr, file=sys.stderr)
            return m.returncode
        n_bytes = 3 * 2 * shape.n_params()  # two inputs read, one output written
        rows.append((label, m.wall_s, n_bytes / m.wall_s / 1e9, m.peak_rss_bytes,
                     m.peak_rss_anon_bytes))

    print("[4/4] verifying against the plain-PyTorch reference (fp32 lerp, bf16 rounding)")
    n_checked = _verify(theta0, theta1, alpha, workdir / "wiseft")
    n_soup = _verify(theta0, theta1, 0.5, workdir / "soup")
    print(f"      wise-ft: {n_checked} tensors bit-identical; soup: {n_soup} tensors "
          f"bit-identical")
    print()
    print(f"{'job':<22}{'wall s':>8}{'GB/s':>8}{'peak RSS':>12}{'peak RssAnon':>14}")
    for label, wall, gbps, rss, anon in rows:
        print(f"{label:<22}{wall:>8.2f}{gbps:>8.2f}{format_size(rss):>12}"
              f"{format_size(anon):>14}")
    print("GB/s = (bytes read + bytes written) / wall time of the whole CLI process")
    _load_with_transformers(workdir / "wiseft")
    return 0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    import ladle  # the package root: right wherever this module sits inside it

    root = str(Path(ladle.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _drop_outputs(workdir: Path) -> None:
    import shutil

    for name in ("wiseft", "soup"):
        shutil.rmtree(workdir / name, ignore_errors=True)


def _verify(theta0: Path, theta1: Path, alpha: float, out: Path) -> int:
    """Compare every output tensor with torch's fp32 lerp, one tensor at a time."""
    import torch
    from safetensors import safe_open

    from ..formats.checkpoint import open_checkpoint

    c0, c1, co = (open_checkpoint(p) for p in (theta0, theta1, out))
    if set(co.tensors) != set(c0.tensors):
        raise AssertionError(f"{out}: tensor names differ from {theta0}")
    w0, w1 = 1.0 - alpha, alpha
    for name in c0.tensors:
        with safe_open(c0.tensors[name].file, "pt") as f0, \
                safe_open(c1.tensors[name].file, "pt") as f1, \
                safe_open(co.tensors[name].file, "pt") as fo:
            x0, x1, got = f0.get_tensor(name), f1.get_tensor(name), fo.get_tensor(name)
        ref = (x0.float() * w0 + x1.float() * w1).to(x0.dtype)
        if not torch.equal(got.view(torch.int16), ref.view(torch.int16)):
            diff = (got.view(torch.int16) != ref.view(torch.int16)).sum().item()
            raise AssertionError(f"{out}: tensor '{name}' differs from the reference in "
                                 f"{diff} elements")
    return len(c0.tensors)


def _load_with_transformers(path: Path) -> None:
    try:
        import torch
        import transformers
    except ImportError:
        return
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    print(f"transformers {transformers.__version__} loaded {path} as "
          f"{type(model).__name__} ({n / 1e6:.0f}M parameters)")
