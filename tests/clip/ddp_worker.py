"""torchrun worker for the DDP test: 2 CPU processes (gloo) fine-tune a tiny CLIP
classifier for a few steps; rank 0 saves and reports whether the ranks agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ladle.clip.config import FinetuneConfig
from ladle.clip.data import DIGIT_NAMES, ImageSet
from ladle.clip.finetune import dist_info, finetune
from ladle.clip.models import create_clip
from ladle.clip.zeroshot import build_zeroshot_classifier


def main(out: Path) -> None:
    torch.manual_seed(0)
    clip, tok = create_clip("ladle-tiny-clip")
    model = build_zeroshot_classifier(clip, tok, list(DIGIT_NAMES), ["the digit {c}."])
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    g = torch.Generator().manual_seed(1)
    data = ImageSet("rand", (torch.rand(64, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.arange(64) % 10, list(DIGIT_NAMES))
    finetune(model, data, FinetuneConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1,
                                         max_steps=3), out_dir=out / "ddp")
    rank, world = dist_info()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(sums, torch.stack([flat.double().sum(), flat.double().abs().sum()]))
    if rank == 0:
        info = {"world": world, "checksums_equal": all(torch.equal(s, sums[0]) for s in sums),
                "changed": not torch.equal(flat, before)}
        (out / "ddp.json").write_text(json.dumps(info))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
