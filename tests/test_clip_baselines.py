"""Baselines of the CLIP harness with known answers (SPEC §1.4, §1.6, §4 rows 14 and 23):
distillation toward the zero-shot model, L2-SP-style pulls toward θ0, the frozen
zero-shot head, and backbone-only cross-dataset soups. Fine-tuning runs on a toy
encoder (milliseconds per step); the soups use the tiny open_clip config."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F
from torch import nn

import ladle
from ladle.clip.config import FinetuneConfig
from ladle.clip.data import ImageSet, prepare
from ladle.clip.finetune import finetune
from ladle.clip.toward_zeroshot import ZeroShotAnchor, distill_kl, l2sp_penalty
from ladle.clip.zeroshot import ImageClassifier, make_head

from toy_models import tiny_image_folder

SIZE, K = 8, 4


def toy_classifier(seed: int = 0) -> ImageClassifier:
    """Flatten → MLP encoder (d = 8) and a unit-norm head at logit scale 10."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 16), nn.GELU(),
                        nn.Linear(16, 8))
    W = F.normalize(torch.randn(8, K, generator=g), dim=0)
    return ImageClassifier(enc, make_head(W, 10.0), image_size=SIZE).eval()


@pytest.fixture(scope="module")
def data() -> ImageSet:
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(32, 1, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    return ImageSet("rand", images, torch.arange(32) % K, ["a", "b", "c", "d"])


# Plain E2E with AdamW, no decay or clipping, one full batch per epoch: every step is
# the same computation in both runs of a comparison.
PLAIN = FinetuneConfig(epochs=6, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_steps=0,
                       grad_clip=0.0, aug="none", save_every_epoch=False,
                       eval_every_epoch=False)


def trained(cfg: FinetuneConfig, data: ImageSet, seed: int = 0) -> ImageClassifier:
    model = toy_classifier(seed)
    finetune(model, data, cfg)
    return model


def distance(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return sum(float((p - q).pow(2).sum()) for p, q in zip(a.parameters(),
                                                               b.parameters())) ** 0.5


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("mode", ["e2e", "lc", "lpft"])
def test_zero_weights_reproduce_plain_finetuning(data, mode):
    base = PLAIN.with_(mode=mode, aug="minimal", mixup=0.4, grad_clip=1.0, weight_decay=0.1,
                       lp_epochs=2, epochs=3)
    plain = trained(base, data)
    zeros = trained(base.with_(distill_weight=0.0, distill_temperature=4.0, l2sp_weight=0.0,
                               l2sp_head_weight=0.0), data)
    assert_same_weights(plain, zeros)
    assert distance(plain, toy_classifier()) > 0.01  # it did train
    # Any non-zero weight changes the run (the options are wired in).
    nudged = trained(base.with_(l2sp_head_weight=1.0, distill_weight=0.5), data)
    assert distance(nudged, plain) > 0


def test_distill_objective_by_hand():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(5, K, generator=g), 3 * torch.randn(5, K, generator=g)
    y = torch.arange(5) % K
    w, T = 0.3, 2.0
    p_t = torch.softmax(teacher / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / T, 1))).sum(1).mean()
    torch.testing.assert_close(distill_kl(student, teacher, T), T * T * kl)
    assert float(distill_kl(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)

    model = toy_classifier()
    anchor = ZeroShotAnchor(model, FinetuneConfig(distill_weight=w, distill_temperature=T))
    x = prepare(torch.randint(0, 255, (5, 1, SIZE, SIZE), dtype=torch.uint8, generator=g),
                SIZE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    with torch.no_grad():
        t = anchor.frozen(x)
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(logits / T, 1))).sum(1).mean()
    torch.testing.assert_close(anchor.objective(ce, logits, x, model),
                               (1 - w) * ce + w * T * T * kl)


def test_distill_loss_in_the_training_loop(data):
    """The loop's recorded loss is (1 − w)·CE + w·T²·KL(θ0 ‖ θ) on the batch."""
    w, T = 0.4, 2.0
    cfg = PLAIN.with_(epochs=2, distill_weight=w, distill_temperature=T)
    theta0 = toy_classifier()
    # With no warm-up the first step's lr is the base lr whatever the run length, so
    # one-step run A ends where two-step run B stands before its second step.
    one = toy_classifier()
    res_a = finetune(one, data, cfg.with_(epochs=1))
    res_b = finetune(toy_classifier(), data, cfg)
    x, y = prepare(data.images, SIZE), data.labels
    with torch.no_grad():
        ce0 = F.cross_entropy(theta0(x), y)
        logits, teacher = one(x), theta0(x)
        p_t = torch.softmax(teacher / T, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(logits / T, 1))).sum(1).mean()
        expected = (1 - w) * F.cross_entropy(logits, y) + w * T * T * kl
    # Step 1 starts at θ0 = teacher: the KL term is zero.
    assert res_a.history[0]["loss"] == pytest.approx((1 - w) * float(ce0), rel=1e-5)
    assert res_b.history[1]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert float(kl) > 1e-4


def test_pure_distillation_ignores_the_labels(data):
    """w = 1 trains on the zero-shot soft targets alone: other labels, same weights."""
    cfg = PLAIN.with_(distill_weight=1.0, distill_temperature=3.0, aug="minimal", mixup=0.3)
    relabelled = ImageSet("rand", data.images, (data.labels + 1) % K, data.classnames)
    assert_same_weights(trained(cfg, data), trained(cfg, relabelled))
    assert distance(trained(cfg, data), toy_classifier()) > 0.01


def test_l2sp_gradient_is_two_lambda_delta():
    lam, lam_head = 0.7, 3.0
    model = toy_classifier()
    anchor = ZeroShotAnchor(model, FinetuneConfig(l2sp_weight=lam, l2sp_head_weight=lam_head))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    penalty = anchor.penalty(model)
    enc, enc0 = list(model.image_encoder.parameters()), list(
        anchor.frozen.image_encoder.parameters())
    head, head0 = model.head.weight, anchor.frozen.head.weight
    torch.testing.assert_close(
        penalty, lam * sum((p - q).pow(2).sum() for p, q in zip(enc, enc0))
        + lam_head * (head - head0).pow(2).sum())
    penalty.backward()
    for p, q in zip(enc, enc0):
        torch.testing.assert_close(p.grad, 2 * lam * (p - q).detach())
    torch.testing.assert_close(head.grad, 2 * lam_head * (head - head0).detach())
    # Frozen parameters are constants: the LC-stage penalty leaves the encoder out.
    for p in enc:
        p.requires_grad_(False)
    assert torch.equal(anchor.penalty(model).detach(),
                       (lam_head * (head - head0).pow(2).sum()).detach())
    a = torch.tensor([1.0, -2.0], requires_grad=True)
    l2sp_penalty([(a, torch.tensor([0.5, 0.5]))]).backward()
    assert a.grad.tolist() == [1.0, -5.0]


def test_huge_l2sp_stays_at_theta0(data):
    cfg = PLAIN.with_(epochs=20)
    theta0 = toy_classifier()
    plain = trained(cfg, data)
    pulled = trained(cfg.with_(l2sp_weight=1e4, l2sp_head_weight=1e4), data)
    far, near = distance(plain, theta0), distance(pulled, theta0)
    assert far > 0.5 and near < 0.05 * far, (far, near)  # measured: 2.5 vs 0.035


def test_freeze_head_trains_only_the_backbone(data):
    model = trained(PLAIN.with_(freeze_head=True), data)
    ref = toy_classifier()
    assert torch.equal(model.head.weight, ref.head.weight)
    assert model.head.weight.requires_grad
    assert not torch.equal(model.image_encoder[1].weight, ref.image_encoder[1].weight)


def test_config_rejects_bad_baseline_options():
    for bad in ({"distill_weight": 1.5}, {"distill_temperature": 0.0},
                {"l2sp_weight": -1.0}, {"mode": "lc", "freeze_head": True},
                {"swa_start": 0}, {"swa_start": 4, "epochs": 3},
                {"swa_start": 1, "ema": 0.9}, {"swa_start": 1, "mode": "lc"}):
        with pytest.raises(ValueError):
            FinetuneConfig.from_dict(bad)
    cfg = FinetuneConfig.from_dict({"distill_weight": 0.5, "l2sp_head_weight": 1e-3})
    assert cfg.to_dict()["distill_weight"] == 0.5


def test_swa_is_the_average_of_the_epoch_iterates(data, tmp_path):
    from safetensors.torch import load_file

    model = toy_classifier()
    cfg = PLAIN.with_(epochs=4, save_every_epoch=True, swa_start=2)
    result = finetune(model, data, cfg, out_dir=tmp_path)
    epochs = [tmp_path / f"epoch_{e}.safetensors" for e in (2, 3, 4)]
    assert result.final == tmp_path / "swa.safetensors"
    assert result.history[-1]["stage"] == "swa" and result.history[-1]["n_averaged"] == 3
    # The epoch checkpoints hold the iterates; their streamed uniform soup is the SWA.
    ladle.soup(epochs, tmp_path / "soup.safetensors", progress=False)
    soup, swa = load_file(tmp_path / "soup.safetensors"), load_file(result.final)
    assert soup.keys() == swa.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(swa[name], value, rtol=0, atol=0)
        torch.testing.assert_close(soup[name], value, rtol=1e-6, atol=1e-7)
    iterates = [load_file(p)["head.weight"] for p in epochs]
    assert not torch.equal(iterates[0], iterates[2])  # the iterates differ


# ---------------------------------------------------------------- cross-dataset soups

TEMPLATES = ["a photo of the {c}.", "the {c}."]


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("open_clip")
    from ladle.clip.models import create_clip

    torch.manual_seed(0)
    return create_clip("ladle-tiny-clip")


def _ingredients(tiny, tmp_path, perturb: float):
    """Two classifiers with different class sets (3 and 5 classes); the second
    encoder perturbed by ``perturb``."""
    from ladle.clip.zeroshot import build_zeroshot_classifier

    clip, tok = tiny
    a = build_zeroshot_classifier(clip, tok, ["cat", "dog", "car"], TEMPLATES)
    b = build_zeroshot_classifier(clip, tok, ["red", "green", "blue", "gray", "pink"],
                                  TEMPLATES)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in b.image_encoder.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g))
    paths = [ladle.save(a, tmp_path / "a.safetensors"), ladle.save(b, tmp_path / "b.safetensors")]
    return a, b, paths


def _eval_head(tiny, names):
    from ladle.clip.zeroshot import logit_scale_of, zeroshot_weights

    clip, tok = tiny
    return logit_scale_of(clip) * zeroshot_weights(clip, tok, names, TEMPLATES).T


def test_soup_of_identical_backbones_is_exact_with_the_eval_head(tiny, tmp_path):
    from ladle.clip.backbone_soup import cross_dataset_soup

    clip, tok = tiny
    a, _, paths = _ingredients(tiny, tmp_path, perturb=0.0)
    names = ["zero", "one", "two"]  # as many classes as ingredient a, other names
    model, res = cross_dataset_soup(clip, tok, paths, names, TEMPLATES,
                                    out=tmp_path / "soup.safetensors")
    # Two identical encoders: (x + x) · 0.5 is x bit for bit.
    assert_same_weights(model.image_encoder, a.image_encoder)
    # The head is the evaluation dataset's zero-shot head, not an ingredient's (or a mean).
    assert torch.equal(model.head.weight, _eval_head(tiny, names))
    assert not torch.allclose(model.head.weight, a.head.weight)
    assert res.method == "backbone-soup" and res.weights == [0.5, 0.5]
    saved = ladle.open(tmp_path / "soup.safetensors")
    assert set(saved.tensors) == set(model.state_dict())
    assert json.loads(saved.metadata["ladle_recipe"])["weights"] == [0.5, 0.5]


def test_backbone_soup_averages_encoders_only(tiny, tmp_path):
    from ladle.clip.backbone_soup import attach_head, backbone_soup, write_backbone_soup
    from ladle.clip.zeroshot import new_classifier_like

    a, b, paths = _ingredients(tiny, tmp_path, perturb=0.01)
    model = new_classifier_like(a)
    names = ["w", "x", "y", "z"]
    attach_head(model, _eval_head(tiny, names).T / 7.0, 7.0)
    head = model.head.weight.detach().clone()
    seen = []
    res = backbone_soup(model, paths, evaluate=lambda m: seen.append(m) or 0.25)
    assert seen == [model] and res.score == 0.25
    for (name, p), pa, pb in zip(model.image_encoder.named_parameters(),
                                 a.image_encoder.parameters(), b.image_encoder.parameters()):
        assert torch.equal(p, (pa + pb) * 0.5), name
    assert torch.equal(model.head.weight, head)
    # File to file: encoder tensors only (include glob), the same numbers.
    out = tmp_path / "backbone.safetensors"
    write_backbone_soup(paths, out)
    assert all(k.startswith("image_encoder.") for k in ladle.open(out).tensors)
    fresh = new_classifier_like(model)
    with torch.no_grad():
        for p in fresh.image_encoder.parameters():
            p.zero_()
    ladle.load_into(fresh, [out], strict=False)
    assert_same_weights(fresh, model)


def test_cli_backbone_soup(tiny, tmp_path):
    from ladle.clip.cli import main

    a, b, paths = _ingredients(tiny, tmp_path, perturb=0.01)
    names = ["zero", "one"]
    folder = tiny_image_folder(tmp_path / "imgs", names)
    cfg = {"model": {"name": "ladle-tiny-clip"}, "templates": TEMPLATES,
           "data": {"train": folder, "test": folder, "classnames": names,
                    "shifts": [{"path": folder, "name": "shift"}]},
           "heldout": {"fraction": 0.34, "seed": 0}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["backbone-soup", "--config", str(tmp_path / "cfg.json"), "--out", str(out),
                 "--quiet", *map(str, paths)]) == 0
    soup = ladle.open(out / "backbone_soup.safetensors")
    zs = ladle.open(out / "zeroshot.safetensors")
    from safetensors.torch import load_file

    soup_t, zs_t = load_file(soup.path), load_file(zs.path)
    assert torch.equal(soup_t["head.weight"], zs_t["head.weight"])  # this config's head
    key = "image_encoder.conv1.weight"
    assert torch.equal(soup_t[key], (a.state_dict()[key] + b.state_dict()[key]) * 0.5)
    records = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert any(r["method"] == "backbone-soup/eval" for r in records)
