"""Known-answer tests of the baselines the field expects: FLYP, Model Stock for CLIP
and Fisher-weighted WiSE-FT (tiny models; no downloads)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import ladle
from ladle.clip.config import FinetuneConfig
from ladle.clip.data import DIGIT_NAMES, ImageSet, prepare
from ladle.clip.fisher import diagonal_fisher, fisher_merge_into
from ladle.clip.flyp import clip_loss, flyp_finetune
from ladle.clip.models import create_clip
from ladle.clip.soups import model_stock_model
from ladle.clip.zeroshot import ImageClassifier, build_zeroshot_classifier, make_head
from ladle.errors import MismatchError

TEMPLATES = ["the digit {c}.", "a photo of the number {c}."]


def _digits(n: int = 16, seed: int = 1) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet("d", (torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.arange(n) % 10, list(DIGIT_NAMES))


def test_clip_loss_known_answers():
    e = torch.eye(4)
    assert float(clip_loss(e, e, 100.0)) < 1e-30 + 1e-6  # perfectly matched pairs
    assert float(clip_loss(torch.ones(5, 3), torch.ones(5, 3), 7.0)) == pytest.approx(
        math.log(5), abs=1e-6)  # indistinguishable pairs: log B
    i, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # logits = [[2, 2], [0, 0]]: rows give log 2 each; columns give (log(1+e^-2)) and
    # (log(1+e^2)) → image side log 2, text side (log(1+e^-2) + log(1+e^2)) / 2.
    text = (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2
    assert float(clip_loss(i, t, 2.0)) == pytest.approx((math.log(2) + text) / 2, abs=1e-6)


def test_flyp_lr0_is_the_zero_shot_model_and_training_moves_both_towers():
    torch.manual_seed(0)
    clip, tok = create_clip("ladle-tiny-clip")
    data = _digits()
    zs = build_zeroshot_classifier(clip, tok, list(DIGIT_NAMES), TEMPLATES)
    base = {"epochs": 1, "batch_size": 8, "warmup_steps": 0, "max_steps": 2, "aug": "none"}
    same, hist = flyp_finetune(clip, tok, data, list(DIGIT_NAMES), TEMPLATES,
                               FinetuneConfig(**base, lr=0.0))
    for k, v in zs.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    assert len(hist) == 1 and math.isfinite(hist[0]["loss"])
    moved, _ = flyp_finetune(clip, tok, data, list(DIGIT_NAMES), TEMPLATES,
                             FinetuneConfig(**base, lr=1e-3))
    assert set(moved.state_dict()) == set(zs.state_dict())  # WiSE-FT-compatible keys
    assert not torch.equal(moved.head.weight, zs.head.weight)  # from the tuned text tower
    assert not torch.equal(moved.image_encoder.conv1.weight, zs.image_encoder.conv1.weight)
    assert torch.equal(clip.visual.conv1.weight, zs.image_encoder.conv1.weight)  # untouched
    with pytest.raises(ValueError, match="flyp"):
        from ladle.clip.finetune import finetune

        finetune(copy.deepcopy(zs), data, FinetuneConfig(**base, mode="flyp"))


def test_model_stock_for_clip_known_answer(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    # Per tensor, deltas a = e0 and b = ½e0 + (√3/2)e1 with cos = ½: t = 2·½/(1·½ + 1) = ⅔.
    ft = []
    for delta in ("a", "b"):
        sd = {}
        for k, v in theta0.items():
            d = torch.zeros(v.numel())
            d[0], d[1] = (1.0, 0.0) if delta == "a" else (0.5, math.sqrt(3) / 2)
            sd[k] = v + d.view_as(v)
        ft.append(ladle.save(sd, tmp_path / f"{delta}.safetensors"))
    exp = SimpleNamespace(theta0=ladle.save(theta0, tmp_path / "zs.safetensors"),
                          fresh_model=lambda: copy.deepcopy(net))
    merged = model_stock_model(exp, ft, tmp_path)
    assert (tmp_path / "model_stock.safetensors").is_file()
    for k, v in theta0.items():
        d = torch.zeros(v.numel())
        d[0], d[1] = 0.75, math.sqrt(3) / 4  # mean of the deltas
        torch.testing.assert_close(merged.state_dict()[k], v + (2 / 3) * d.view_as(v),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        model_stock_model(exp, ft[:1], tmp_path)


def test_fisher_merge_known_answers(tmp_path):
    net = torch.nn.Linear(2, 2)
    files = {}
    for name, w, b in (("t0", 0.0, 0.0), ("t1", 1.0, 1.0), ("f0", 1.0, None),
                       ("f1", 3.0, None)):
        sd = {"weight": torch.full((2, 2), w)}
        if b is not None:
            sd["bias"] = torch.full((2,), b)
        files[name] = ladle.save(sd, tmp_path / f"{name}.safetensors")
    fisher_merge_into(net, files["t0"], files["t1"], files["f0"], files["f1"], 0.5)
    # (½·1·0 + ½·3·1) / (½·1 + ½·3) = 0.75; the bias has no Fisher: plain ½.
    assert torch.equal(net.weight, torch.full((2, 2), 0.75))
    assert torch.equal(net.bias, torch.full((2,), 0.5))
    fisher_merge_into(net, files["t0"], files["t1"], files["f0"], files["f1"], 1.0)
    assert torch.equal(net.weight, torch.ones(2, 2))  # the endpoint exactly
    zero = ladle.save({"weight": torch.zeros(2, 2)}, tmp_path / "z.safetensors")
    fisher_merge_into(net, files["t0"], files["t1"], zero, zero, 0.25, floor=1e-8)
    torch.testing.assert_close(net.weight, torch.full((2, 2), 0.25))  # floored: plain mix
    only = ladle.save({"bias": torch.ones(2), "weight": torch.ones(2, 2)},
                      tmp_path / "only.safetensors")
    with pytest.raises(MismatchError, match="bias"):
        fisher_merge_into(net, files["t0"], files["t1"], files["f0"], only, 0.5)


def test_diagonal_fisher_exact_known_answer():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 4))
    model = ImageClassifier(encoder, make_head(torch.randn(4, 3), 2.0), image_size=2)
    g = torch.Generator().manual_seed(2)
    data = ImageSet("x", (torch.rand(5, 3, 2, 2, generator=g) * 255).to(torch.uint8),
                    torch.zeros(5, dtype=torch.long), ["a", "b", "c"])
    fisher = diagonal_fisher(model, data, sample=False)
    with torch.no_grad():
        f = model.features(prepare(data.images, 2))
        p = model.head(f).softmax(-1)
    # ∂log p_y/∂W_j = (1[y=j] − p_j)·f, so E_y[(·)²] = p_j(1 − p_j)·f².
    expected = ((p * (1 - p))[:, :, None] * (f ** 2)[:, None, :]).mean(0)
    torch.testing.assert_close(fisher["head.weight"], expected, rtol=1e-4, atol=1e-7)
    sampled = diagonal_fisher(model, data, examples=3, seed=1)
    assert set(sampled) == set(fisher) and all(bool((v >= 0).all()) for v in sampled.values())
