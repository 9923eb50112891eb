"""Tiny torch models and ingredient checkpoints for the live-model and soup tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

import ladle


class TiedNet(torch.nn.Module):
    """Embedding and output layer share one weight (as in language models)."""

    def __init__(self, vocab: int = 11, width: int = 6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.hidden = torch.nn.Linear(width, width)
        self.norm = torch.nn.BatchNorm1d(width)
        self.out = torch.nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, idx):
        return self.out(self.norm(torch.relu(self.hidden(self.embed(idx)))))


def mlp(seed: int = 0, width: int = 16, dtype=torch.float32) -> torch.nn.Module:
    """A small MLP classifier (6 features -> 3 classes)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, 3)).to(dtype)


def data(n: int = 96, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed held-out batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def ingredients(tmp: Path, n: int, base: torch.nn.Module, noise: float = 0.05,
                bad: int | None = None, seed: int = 0) -> list[Path]:
    """``n`` perturbed copies of ``base`` saved as safetensors; ``bad`` scaled ×10."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g).to(p.dtype))
                if i == bad:
                    p.mul_(10)
        paths.append(ladle.save(m, tmp / f"ing{i}.safetensors"))
    return paths


def neg_loss(x: torch.Tensor, y: torch.Tensor):
    """evaluate(module) -> -cross-entropy on (x, y) (higher is better)."""

    def evaluate(module: torch.nn.Module) -> float:
        with torch.no_grad():
            return -torch.nn.functional.cross_entropy(module(x), y).item()

    return evaluate


def tiny_image_folder(root: Path, names: list[str], n_images: int = 6) -> str:
    """An ImageFolder of ``n_images`` 32-px grey squares spread over ``names``."""
    from PIL import Image

    for i in range(n_images):
        (root / names[i % len(names)]).mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), color=40 * i).save(root / names[i % len(names)] / f"{i}.png")
    return str(root)
