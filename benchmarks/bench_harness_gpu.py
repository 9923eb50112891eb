"""GPU device check of the CLIP harness: ViT-B-32 (``pretrained=None``) fine-tuning
steps/s and evaluation images/s with ladle's harness vs a plain open_clip loop on the
same device, model, batch size, precision and in-memory 224-px data. Exits 0 with a
message when there is no CUDA GPU.

Also checks that ``ladle.load_into`` into the CUDA model (staged through pinned host
memory) gives the same parameters as a CPU load.

Example:
    python benchmarks/bench_harness_gpu.py --steps 30 --batch-size 128 --autocast bf16
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps timed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-images", type=int, default=4096)
    p.add_argument("--autocast", default="bf16", choices=("bf16", "fp16", "none"))
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_harness_gpu: no CUDA GPU on this machine; nothing measured.")
        return 0
    import torch.nn.functional as F

    from ladle.clip.config import FinetuneConfig
    from ladle.clip.data import ImageSet
    from ladle.clip.evaluate import predict
    from ladle.clip.finetune import finetune
    from ladle.clip.models import create_clip
    from ladle.clip.precision import autocast_context
    from ladle.clip.zeroshot import build_zeroshot_classifier

    mode = None if a.autocast == "none" else a.autocast
    names = [f"class {i}" for i in range(10)]
    torch.manual_seed(0)
    clip, tok = create_clip("ViT-B-32", pretrained=None)
    zs = build_zeroshot_classifier(clip, tok, names, ["a photo of a {c}."])
    del clip
    g = torch.Generator().manual_seed(0)
    n_train = a.batch_size * (a.steps + 3)
    images = (torch.rand(max(n_train, a.eval_images), 3, 224, 224, generator=g) * 255
              ).to(torch.uint8)
    labels = torch.arange(len(images)) % 10
    train = ImageSet("train", images[:n_train], labels[:n_train], names)
    test = ImageSet("test", images[:a.eval_images], labels[:a.eval_images], names)
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, ViT-B-32 pretrained=None, batch "
          f"{a.batch_size}, autocast {a.autocast}, channels_last {a.channels_last}")

    # --- fine-tuning: ladle vs plain (3 warm-up steps excluded from both) ---
    def ladle_ft(steps: int) -> float:
        m = copy.deepcopy(zs)
        cfg = FinetuneConfig(epochs=1, batch_size=a.batch_size, lr=1e-5, warmup_steps=0,
                             max_steps=steps, aug="none", device="cuda", autocast=mode,
                             channels_last=a.channels_last, save_every_epoch=False,
                             eval_every_epoch=False)
        t0 = time.perf_counter()
        finetune(m, train, cfg)
        _sync()
        return time.perf_counter() - t0

    ladle_s = ladle_ft(a.steps + 3) - ladle_ft(3)
    m = copy.deepcopy(zs).to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.1)
    mean = torch.tensor(zs.preprocess["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(zs.preprocess["std"], device=dev).view(1, 3, 1, 1)
    t_plain = []
    for step in range(a.steps + 3):
        if step == 3:
            _sync()
            t0 = time.perf_counter()
        sl = slice(step * a.batch_size, (step + 1) * a.batch_size)
        x = ((images[sl].to(dev).float() / 255) - mean) / std
        with autocast_context(dev, mode):
            loss = F.cross_entropy(m(x).float(), labels[sl].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    _sync()
    t_plain.append(time.perf_counter() - t0)
    print(f"fine-tune: ladle {a.steps / ladle_s:.2f} steps/s, plain loop "
          f"{a.steps / t_plain[0]:.2f} steps/s, ratio {t_plain[0] / ladle_s:.3f}")

    # --- evaluation ---
    m = copy.deepcopy(zs).to(dev).eval()
    predict(m, test.subset(range(a.batch_size)), batch_size=a.batch_size, autocast=mode)
    _sync()
    t0 = time.perf_counter()
    got = predict(m, test, batch_size=a.batch_size, autocast=mode,
                  channels_last=a.channels_last)
    _sync()
    ladle_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = []
    with torch.no_grad(), autocast_context(dev, mode):
        for i in range(0, len(test), a.batch_size):
            x = ((test.images[i:i + a.batch_size].to(dev).float() / 255) - mean) / std
            outs.append(m(x).float().cpu())
    _sync()
    plain_eval = time.perf_counter() - t0
    agree = float((torch.cat(outs).argmax(1) == got.argmax(1)).float().mean())
    print(f"eval: ladle {len(test) / ladle_eval:.0f} images/s, plain loop "
          f"{len(test) / plain_eval:.0f} images/s, ratio {plain_eval / ladle_eval:.3f}, "
          f"top-1 agreement {agree:.3f}")

    # --- load_into a CUDA model equals a CPU load ---
    import ladle

    with tempfile.TemporaryDirectory() as tmp:
        path = ladle.save(zs, Path(tmp) / "zs.safetensors")
        cpu, gpu = copy.deepcopy(zs), copy.deepcopy(zs).to(dev)
        with torch.no_grad():
            for q in gpu.parameters():
                q.zero_()
        t0 = time.perf_counter()
        ladle.load_into(gpu, [path, path], [0.25, 0.75])
        _sync()
        t_load = time.perf_counter() - t0
        ladle.load_into(cpu, [path, path], [0.25, 0.75])
        same = all(torch.equal(a_.cpu(), b_) for a_, b_ in
                   zip(gpu.state_dict().values(), cpu.state_dict().values()))
    print(f"load_into CUDA model: {t_load:.2f}s, bit-identical to the CPU load: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
