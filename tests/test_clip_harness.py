"""CLIP harness tests (tiny random CLIP, tens of steps; no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import ladle
from ladle.clip.config import FinetuneConfig, load_preset, sweep_configs
from ladle.clip.data import DIGIT_NAMES, ImageSet, heldout_split
from ladle.clip.evaluate import (
    accuracy,
    clopper_pearson,
    output_ensemble,
    predict,
    predictions,
)
from ladle.clip.finetune import finetune
from ladle.clip.models import create_clip
from ladle.clip.robustness import (
    effective_robustness,
    fit_logit_linear,
    logit,
    sigmoid,
)
from ladle.clip.templates import get_templates
from ladle.clip.zeroshot import (
    ImageClassifier,
    build_zeroshot_classifier,
    logit_scale_of,
    zeroshot_weights,
)

from child_env import child_env

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of the number {c}.", "the digit {c}."]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip("ladle-tiny-clip")


@pytest.fixture(scope="module")
def digits():
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(96, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(96) % 10
    return ImageSet("rand", images, labels, list(DIGIT_NAMES))


def test_templates_sets():
    assert len(get_templates("imagenet")) == 80
    assert len(set(get_templates("imagenet"))) == 80
    with pytest.raises(ValueError):
        get_templates(["no placeholder"])


def test_zeroshot_head_unit_norm_and_hand_computation(tiny):
    clip, tok = tiny
    names = ["zero", "one", "two"]
    W = zeroshot_weights(clip, tok, names, TEMPLATES)
    assert W.shape == (clip.text_projection.shape[1], 3)
    torch.testing.assert_close(W.norm(dim=0), torch.ones(3), rtol=0, atol=1e-6)
    with torch.no_grad():
        for j, name in enumerate(names):
            embs = [clip.encode_text(tok([t.format(c=name)]))[0] for t in TEMPLATES]
            embs = [e / e.norm() for e in embs]
            mean = sum(embs) / len(embs)
            torch.testing.assert_close(W[:, j], mean / mean.norm(), rtol=1e-5, atol=1e-6)
    model = ImageClassifier.from_clip(clip, W)
    torch.testing.assert_close(model.head.weight, logit_scale_of(clip) * W.T)
    assert set(model.state_dict()) == set(ImageClassifier.from_clip(clip, W).state_dict())


def test_step0_reproduces_zeroshot(tiny, digits):
    clip, tok = tiny
    zs = build_zeroshot_classifier(clip, tok, digits.classnames, TEMPLATES)
    W = zeroshot_weights(clip, tok, digits.classnames, TEMPLATES)
    from ladle.clip.data import prepare

    with torch.no_grad():
        f = clip.encode_image(prepare(digits.images, 32))
        manual = logit_scale_of(clip) * (f / f.norm(dim=-1, keepdim=True)) @ W
    before = predict(zs, digits)
    torch.testing.assert_close(before, manual, rtol=1e-5, atol=1e-4)
    # lr = 0: the fine-tuning loop (augmentation, clipping, AdamW, wd) leaves θ0 intact.
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=0.0, warmup_steps=0, max_steps=2)
    finetune(zs, digits, cfg)
    assert torch.equal(predict(zs, digits), before)


def _finetuned(tiny, digits, tmp_path, mode):
    clip, tok = tiny
    zs = build_zeroshot_classifier(clip, tok, digits.classnames, TEMPLATES)
    theta0 = ladle.save(zs, tmp_path / "zs.safetensors")
    model = build_zeroshot_classifier(clip, tok, digits.classnames, TEMPLATES)
    res = finetune(model, digits, FinetuneConfig(mode=mode, epochs=2, batch_size=32, lr=1e-2,
                                                 warmup_steps=1, max_steps=5),
                   out_dir=tmp_path / mode)
    assert len(res.checkpoints) == 2 and res.final.is_file()
    return zs, model, theta0, res.final


def test_alpha_endpoints_exact(tiny, digits, tmp_path):
    zs, ft, theta0, theta1 = _finetuned(tiny, digits, tmp_path, "e2e")
    target = build_zeroshot_classifier(*tiny, digits.classnames, ["{c}"])
    points = ladle.wiseft_sweep(target, theta0, theta1, [0.0, 1.0],
                                evaluate=lambda m: predict(m, digits))
    assert torch.equal(points[0].score, predict(zs, digits))
    assert torch.equal(points[1].score, predict(ft, digits))
    assert not torch.equal(points[0].score, points[1].score)


def test_lc_wiseft_equals_logit_ensemble(tiny, digits, tmp_path):
    zs, ft, theta0, theta1 = _finetuned(tiny, digits, tmp_path, "lc")
    torch.testing.assert_close(ft.image_encoder.conv1.weight, zs.image_encoder.conv1.weight)
    l0, l1 = predict(zs, digits), predict(ft, digits)
    target = build_zeroshot_classifier(*tiny, digits.classnames, ["{c}"])
    alphas = [0.25, 0.5, 0.8]
    points = ladle.wiseft_sweep(target, theta0, theta1, alphas,
                                evaluate=lambda m: predict(m, digits))
    for a, p in zip(alphas, points):
        torch.testing.assert_close(p.score, output_ensemble(l0, l1, a), rtol=1e-5, atol=1e-4)


def test_output_space_baselines_known_answers():
    g = torch.Generator().manual_seed(0)
    l0, l1 = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    for kind in ("logit", "softmax", "random"):
        for a, end in ((0.0, l0), (1.0, l1)):
            got = output_ensemble(l0, l1, a, kind=kind)
            same = got.argmax(1) == end.argmax(1)
            assert bool(same.all()), (kind, a)  # the endpoints' predictions
    mixed = output_ensemble(l0, l1, 0.3, kind="random")
    from_1 = (mixed == l1).all(1)
    assert bool(((mixed == l0).all(1) | from_1).all())  # each row is one model's
    assert abs(float(from_1.double().mean()) - 0.3) < 0.06  # ~α of them from θ1
    probs = output_ensemble(l0, l1, 0.3, kind="softmax")
    torch.testing.assert_close(probs.sum(1), torch.ones(500, dtype=probs.dtype))


def test_heldout_split_disjoint_deterministic():
    tr, ho = heldout_split(1000, 0.02, seed=3)
    assert len(ho) == 20 and len(tr) == 980
    assert not set(tr) & set(ho) and sorted(tr + ho) == list(range(1000))
    assert heldout_split(1000, 0.02, seed=3) == (tr, ho)
    assert heldout_split(1000, 0.02, seed=4)[1] != ho


def test_effective_robustness_recovers_line():
    a, b = 0.8, -0.3
    xs = [0.55, 0.62, 0.7, 0.81, 0.9]
    ys = [float(sigmoid(a * logit(x) + b)) for x in xs]
    fit = fit_logit_linear(xs, ys)
    assert fit.a == pytest.approx(a, abs=1e-9) and fit.b == pytest.approx(b, abs=1e-9)
    y = float(sigmoid(a * logit(0.75) + b))
    assert effective_robustness(0.75, y + 0.05, fit) == pytest.approx(0.05, abs=1e-9)


def test_subsets_intervals_presets():
    ds = ImageSet("s", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([2, 0]),
                  ["a", "b", "c", "d"], class_subset=[0, 2])
    logits = torch.tensor([[0.0, 9.0, 1.0, 0.0], [5.0, 9.0, 1.0, 9.0]])
    assert predictions(logits, ds).tolist() == [2, 0] and accuracy(logits, ds) == 1.0
    ds.class_subset, ds.class_map = None, {0: 0, 1: 0, 2: 1, 3: 1}
    ds.labels = torch.tensor([0, 1])
    assert predictions(logits, ds).tolist() == [0, 0]
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    e2e = load_preset("wiseft-e2e")["finetune"]
    assert (e2e["batch_size"], e2e["weight_decay"], e2e["lr"], e2e["warmup_steps"],
            e2e["grad_clip"], e2e["epochs"]) == (256, 0.1, 2e-5, 500, 1.0, 10)
    soups = load_preset("soups-vit-b32")
    assert len(sweep_configs(soups["sweep"], soups["finetune"])) == 48
    rs = sweep_configs(soups["random_search"], soups["finetune"])
    assert len(rs) == 72 and all(1e-6 <= c.lr <= 1e-4 and 4 <= c.epochs <= 16 for c in rs)
    assert load_preset("wiseft-lc")["finetune"]["mode"] == "lc"


def test_vit_b32_loads_and_interpolates(tmp_path):
    clip, tok = create_clip("ViT-B-32", pretrained=None)
    zs = build_zeroshot_classifier(clip, tok, ["cat", "dog", "car"], ["a photo of a {c}."])
    del clip
    theta0 = ladle.save(zs, tmp_path / "b32-zs.safetensors")
    with torch.no_grad():
        for p in zs.parameters():
            p.add_(0.01)
    theta1 = ladle.save(zs, tmp_path / "b32-ft.safetensors")
    a = zs.head.weight.detach().clone()
    x = torch.zeros(1, 3, 224, 224)
    (pt,) = ladle.wiseft_sweep(zs, theta0, theta1, [0.5], evaluate=lambda m: m(x))
    assert pt.score.shape == (1, 3)
    torch.testing.assert_close(zs.head.weight, a - 0.005, rtol=0, atol=1e-6)


def test_ddp_two_cpu_processes(tmp_path):
    script = REPO / "tests" / "clip" / "ddp_worker.py"
    env = child_env(OMP_NUM_THREADS="1", LADLE_DDP_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    info = json.loads((tmp_path / "ddp.json").read_text())
    assert info["world"] == 2 and info["checksums_equal"] and info["changed"]
    assert (tmp_path / "ddp" / "epoch_1.safetensors").is_file()


def test_cli_pipeline_end_to_end(tmp_path):
    cfg = {
        "extends": "demo",
        "data": {"fonts_per_class": 4, "limit": 120, "pretrain_limit": 256},
        "pretrain": {"epochs": 1, "batch_size": 64},
        "finetune": {"epochs": 1, "batch_size": 32, "max_steps": 3},
        "sweep": {"kind": "list", "runs": [{"name": "a", "lr": 1e-3}, {"name": "b", "lr": 3e-4},
                                           {"name": "c", "mixup": 0.5}]},
        "learned_soup": {"epochs": 1},
        "alphas": [0.0, 0.5, 1.0],
        "cache_dir": str(tmp_path / "cache"),
        "soups": ["uniform", "greedy", "learned", "model_stock"],
        "fisher": {"examples": 6},
        "seeds": [0, 1],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    from ladle.cli.cli import main

    out = tmp_path / "run"
    assert main(["clip", "demo", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    for name in ["report.md", "wiseft.png", "soups.png", "results.jsonl", "greedy_soup.safetensors",
                 "zeroshot.safetensors", "split.json"]:
        assert (out / name).is_file(), name
    records = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in records}
    assert {"wiseft/alpha", "greedy-soup", "logit-ensemble", "finetune/epoch",
            "logit-ensemble/alpha", "softmax-ensemble/alpha", "random-ensemble/alpha"} <= methods
    report = (out / "report.md").read_text()
    assert "reproduce" in report
    # Every seed gets its own pre-training, fine-tuning and sweep, and a verdict row.
    assert "## Across seeds" in report and "P1" in report and "P2" in report
    assert (out / "seed1" / "finetune").is_dir() and (out / "seed1" / "results.jsonl").is_file()
    rows = [ln for ln in report.splitlines() if ln.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2 and all(("**yes**" in r) != ("**no**" in r) for r in rows)
    # The field's baselines as harness options: Model Stock in the soups, Fisher-weighted
    # WiSE-FT next to the plain curve, FLYP as a fine-tuning mode.
    assert "model stock" in {r.get("name") for r in records if r["method"] == "soups/summary"}
    assert {"fisher-wiseft/alpha"} <= methods and (out / "fisher1.safetensors").is_file()
    from test_clip_report import check_demo_analyses  # the report's analysis sections

    check_demo_analyses(out)
    wise = out / "wise"
    assert main(["clip", "wiseft", "--config", str(path), "--out", str(wise), "--quiet",
                 "--set", f"cache_dir={tmp_path / 'cache'}"]) == 0
    assert (wise / "wiseft_report.md").is_file() and (wise / "wiseft.png").is_file()
    flyp = tmp_path / "flyp"
    assert main(["clip", "wiseft", "--config", str(path), "--out", str(flyp), "--quiet",
                 "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "finetune.mode=flyp",
                 "--set", "fisher=null"]) == 0
    assert (flyp / "finetune" / "flyp.safetensors").is_file()
    assert main(["clip", "zeroshot", "--config", str(path), "--out", str(tmp_path / "zs"),
                 "--quiet", "--set", f"cache_dir={tmp_path / 'cache'}"]) == 0
    assert (tmp_path / "zs" / "zeroshot.safetensors").is_file()
    assert main(["clip", "evaluate", "--config", str(path), "--out", str(tmp_path / "ev"),
                 "--quiet", "--set", f"cache_dir={tmp_path / 'cache'}",
                 str(out / "greedy_soup.safetensors")]) == 0


def test_imagefolder_csv_lpft_ema(tiny, digits, tmp_path):
    from PIL import Image

    from ladle.clip.data import load_csv, load_image_folder
    from ladle.clip.loaders import eval_batches
    from ladle.clip.transforms import default_cfg

    rows = ["path,label"]
    for i in range(6):
        name = DIGIT_NAMES[i % 2]
        (tmp_path / "folder" / name).mkdir(parents=True, exist_ok=True)
        arr = (digits.images[i, 0].numpy()).astype("uint8")
        Image.fromarray(arr).resize((40, 48)).save(tmp_path / "folder" / name / f"{i}.png")
        rows.append(f"folder/{name}/{i}.png,{name}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    ds = load_image_folder(tmp_path / "folder", 32, classnames=list(DIGIT_NAMES))
    x, _, _ = next(eval_batches(ds, 6, default_cfg(32)))  # decoded lazily, per batch
    assert x.shape == (6, 3, 32, 32) and ds.class_subset == [0, 1]
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    cs = load_csv(tmp_path / "set.csv", 32, list(DIGIT_NAMES))
    assert sorted(cs.labels.tolist()) == [0, 0, 0, 1, 1, 1] and cs.class_subset == [0, 1]
    clip, tok = tiny
    model = build_zeroshot_classifier(clip, tok, list(DIGIT_NAMES), TEMPLATES)
    before = model.image_encoder.conv1.weight.detach().clone()
    res = finetune(model, digits, FinetuneConfig(mode="lpft", lp_epochs=1, epochs=1,
                                                 batch_size=32, lr=1e-3, warmup_steps=1,
                                                 ema=0.5, max_steps=2, aug="strong"),
                   out_dir=tmp_path / "lpft", eval_sets={"id": digits}, id_name="id")
    assert [h["stage"] for h in res.history] == ["lc", "e2e"]
    assert not torch.equal(model.image_encoder.conv1.weight, before)
    assert 0.0 <= res.history[-1]["acc"]["id"] <= 1.0


def test_avg_ood_excludes_id_and_heldout():
    from ladle.clip.evaluate import evaluate_logits

    sets, logits = {}, {}
    for name, correct in (("heldout", 1), ("id", 1), ("a", 0), ("b", 1)):
        sets[name] = ImageSet(name, torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
                              torch.tensor([0]), ["x", "y"])
        logits[name] = torch.tensor([[1.0, 0.0]] if correct else [[0.0, 1.0]])
    res = evaluate_logits(logits, sets, id_name="id")
    assert res["avg_ood"] == 0.5 and res["avg_id_ood"] == 0.75
