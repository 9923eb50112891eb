"""The plain-PyTorch merge recipe, as a baseline for ``compare.py``.

Loads every input state dict whole with ``safetensors.torch.load_file``, computes
``Σ_k w_k · θ_k`` per tensor in fp32 (input order, one rounding per multiply and add, the
same arithmetic contract as ladle), casts back to the input dtype, writes each output
shard with ``save_file`` under the first input's shard names, and fsyncs it (every tool
in the comparison is timed until its output is on disk).

Example:
    python benchmarks/torch_merge.py --weights 0.5 0.5 -o out/ a/ b/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

INDEX_NAME = "model.safetensors.index.json"


def load_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint and the shard file name of each."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    for f in files:
        part = load_file(str(f))
        state.update(part)
        where.update(dict.fromkeys(part, f.name))
    return state, where


def merge(inputs: list[Path], weights: list[float], out: Path) -> None:
    """Write the weighted sum of ``inputs`` to ``out`` (a directory)."""
    loaded = [load_state_dict(p) for p in inputs]
    states = [s for s, _ in loaded]
    where = loaded[0][1]
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            acc = first.float() * weights[0]
            for state, w in zip(states[1:], weights[1:]):
                acc = acc + state[name].float() * w
            merged = acc.to(first.dtype)
        else:
            merged = first
        shards.setdefault(where[name], {})[name] = merged
    out.mkdir(parents=True, exist_ok=True)
    for file_name, tensors in shards.items():
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        fd = os.open(out / file_name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for extra in ("config.json", INDEX_NAME):
        if (inputs[0] / extra).is_file():
            shutil.copyfile(inputs[0] / extra, out / extra)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the in-process time as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--weights", type=float, nargs="+", required=True)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    if len(args.weights) != len(args.inputs):
        p.error("one weight per input")
    t0 = time.perf_counter()
    merge(args.inputs, args.weights, args.out)
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
