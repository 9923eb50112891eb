"""Streaming evaluation of the CLIP harness at scale vs a plain open_clip loop.

Generates N 224-px JPEG images (default 50,000; PIL, 5 classes of noisy coloured
shapes, deterministic from the index; ImageFolder layout, cached in the work
directory), then evaluates them twice, each in its own measured child process with
the same model, batch size and DataLoader workers:

- ``ladle``: ``ladle.clip`` zero-shot head + ``evaluate_model`` on the ImageFolder
  spec (streaming ``FileSet``, open_clip's own preprocess, workers);
- ``plain``: ``open_clip.create_model_and_transforms`` + torchvision ``ImageFolder``
  with ``preprocess_val`` + ``DataLoader`` + ``encode_image`` @ text features.

Prints images/s of both, the ratio ladle / plain, and the ladle run's peak RSS and
RssAnon summed over the process and its workers, and its peak PSS (see
``memwatch.py``). Forked workers share the parent's pages (a process that imports
torch and open_clip is ~0.75 GiB RSS), so summed RSS counts those pages once per
worker; PSS divides shared pages among their users and is the tree's real footprint.
Asserts ratio ≥ 0.8 and peak PSS < 3 GiB (the issue's bounds; ``--no-assert`` only
prints). The model is ``ladle-bench-vit-224`` (``clip_configs/``: a 224-px ViT with
patch 32, width 64, 2 layers) so that 2 CPU cores finish in minutes and the figure
measures the data path rather than a large network.

Example:
    python benchmarks/bench_harness_eval.py --n 50000 --workers 4 --workdir bench-work
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSES = ("circle", "square", "triangle", "cross", "stripes")
MODEL = "ladle-bench-vit-224"
GIB = 1024 ** 3


def _draw(i: int, size: int = 224):
    """Image ``i``: a class-``i % 5`` shape in a random colour on a noisy background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    bg = rng.integers(0, 256, 3)
    arr = np.clip(bg + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    c = tuple(int(v) for v in rng.integers(0, 256, 3))
    x0, y0 = (int(v) for v in rng.integers(20, 80, 2))
    x1, y1 = x0 + int(rng.integers(80, 140)), y0 + int(rng.integers(80, 140))
    kind = CLASSES[i % len(CLASSES)]
    if kind == "circle":
        d.ellipse((x0, y0, x1, y1), fill=c)
    elif kind == "square":
        d.rectangle((x0, y0, x1, y1), fill=c)
    elif kind == "triangle":
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=c)
    elif kind == "cross":
        d.line((x0, y0, x1, y1), fill=c, width=14)
        d.line((x0, y1, x1, y0), fill=c, width=14)
    else:
        for k in range(x0, x1, 16):
            d.line((k, y0, k, y1), fill=c, width=6)
    return im


def generate(root: Path, n: int) -> Path:
    """``root/images-<n>/<class>/<i>.jpg`` (reused when complete)."""
    out = root / f"images-{n}"
    done = out / ".complete"
    if done.is_file():
        return out
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        path = out / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            _draw(i).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
    done.write_text(str(n))
    print(f"generated {n} JPEGs in {time.perf_counter() - t0:.0f}s under {out}", flush=True)
    return out


def _model():
    """The bench model's CLIP and tokenizer, same weights in both children."""
    import torch

    from ladle.clip.models import create_clip

    torch.manual_seed(0)
    return create_clip(MODEL, config=HERE / "clip_configs" / f"{MODEL}.json")


def child_ladle(images: Path, batch_size: int, workers: int) -> dict:
    """ladle's streaming evaluation of the ImageFolder (zero-shot head)."""
    from ladle.clip.data import load_dataset
    from ladle.clip.evaluate import evaluate_model
    from ladle.clip.zeroshot import build_zeroshot_classifier

    clip, tok = _model()
    model = build_zeroshot_classifier(clip, tok, list(CLASSES), ["a photo of a {c}."])
    del clip
    data = load_dataset({"path": str(images)}, None, list(CLASSES))
    t0 = time.perf_counter()
    acc = evaluate_model(model, {"id": data}, id_name="id", batch_size=batch_size,
                         loader={"workers": workers})
    return {"seconds": time.perf_counter() - t0, "n": len(data), "acc": acc["id"]}


def child_plain(images: Path, batch_size: int, workers: int) -> dict:
    """The plain open_clip + torchvision ImageFolder + DataLoader loop."""
    import open_clip
    import torch
    from torchvision.datasets import ImageFolder

    from ladle.clip.models import register_configs

    register_configs(HERE / "clip_configs")
    torch.manual_seed(0)
    model, _, preprocess_val = open_clip.create_model_and_transforms(MODEL)
    model.eval()
    tok = open_clip.get_tokenizer(MODEL)
    ds = ImageFolder(str(images), transform=preprocess_val)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    correct = n = 0
    with torch.no_grad():
        text = model.encode_text(tok([f"a photo of a {c}." for c in ds.classes]))
        text = text / text.norm(dim=-1, keepdim=True)
        t0 = time.perf_counter()
        for x, y in loader:
            f = model.encode_image(x)
            pred = ((f / f.norm(dim=-1, keepdim=True)) @ text.T).argmax(1)
            correct += int((pred == y).sum())
            n += len(y)
    return {"seconds": time.perf_counter() - t0, "n": n, "acc": correct / n}


def run(n: int, workdir: Path, batch_size: int, workers: int, check: bool = True) -> dict:
    """Generate the images and measure both children; returns the figures."""
    sys.path.insert(0, str(HERE))
    from memwatch import run_measured

    images = generate(workdir, n)
    import ladle

    # The children import the ladle this process imported (installed in CI, the
    # source tree in development), never a hard-coded repository path.
    package_parent = str(Path(ladle.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    res: dict = {"n": n, "batch_size": batch_size, "workers": workers, "model": MODEL}
    for mode in ("plain", "ladle"):
        r = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", mode,
                          "--images", str(images), "--batch-size", str(batch_size),
                          "--workers", str(workers)], env=env, pss=True)
        if r["rc"] != 0:
            raise RuntimeError(f"{mode} child failed (rc {r['rc']}):\n{r['stderr'][-3000:]}")
        out = json.loads(r["stdout"].strip().splitlines()[-1])
        res[mode] = {**out, "images_per_s": out["n"] / out["seconds"],
                     "peak_rss_bytes": r["peak_rss_bytes"],
                     "peak_rss_anon_bytes": r["peak_rss_anon_bytes"],
                     "peak_pss_bytes": r["peak_pss_bytes"]}
    res["ratio"] = res["ladle"]["images_per_s"] / res["plain"]["images_per_s"]
    lad, pl = res["ladle"], res["plain"]
    print(f"N={n} batch={batch_size} workers={workers} model={MODEL}")
    print(f"plain open_clip loop: {pl['images_per_s']:.1f} images/s "
          f"(peak RSS {pl['peak_rss_bytes'] / GIB:.2f} GiB, PSS "
          f"{pl['peak_pss_bytes'] / GIB:.2f} GiB, acc {pl['acc']:.3f})")
    print(f"ladle streaming eval: {lad['images_per_s']:.1f} images/s "
          f"(acc {lad['acc']:.3f})")
    print(f"ratio ladle/plain: {res['ratio']:.3f}")
    print(f"ladle peak RSS {lad['peak_rss_bytes'] / GIB:.2f} GiB, peak RssAnon "
          f"{lad['peak_rss_anon_bytes'] / GIB:.2f} GiB, peak PSS "
          f"{lad['peak_pss_bytes'] / GIB:.2f} GiB (sums over the process + {workers} "
          "workers)")
    if check:
        assert lad["n"] == pl["n"] == n, (lad["n"], pl["n"], n)
        assert abs(lad["acc"] - pl["acc"]) <= 1e-3, "ladle and the plain loop disagree"
        assert res["ratio"] >= 0.8, f"ladle at {res['ratio']:.2f} of the plain loop (< 0.8)"
        assert lad["peak_pss_bytes"] < 3 * GIB, "ladle's peak PSS is 3 GiB or more"
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="number of images")
    p.add_argument("--workdir", default="bench-work", help="where the images are cached")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-assert", action="store_true", help="print only")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", choices=("ladle", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        fn = child_ladle if a.child == "ladle" else child_plain
        print(json.dumps(fn(Path(a.images), a.batch_size, a.workers)))
        return 0
    res = run(a.n, Path(a.workdir), a.batch_size, a.workers, check=not a.no_assert)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
