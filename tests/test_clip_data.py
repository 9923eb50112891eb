"""Streaming data, the model's own preprocessing, torchvision augmentation, the
memory-mapped LC feature cache, class subsets/maps and gradient accumulation
(tiny CLIP, a handful of images; no downloads)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
np = pytest.importorskip("numpy")

from ladle.clip.config import FinetuneConfig
from ladle.clip.data import DIGIT_NAMES, ImageSet, class_map, class_subset, load_dataset
from ladle.clip.evaluate import evaluate_model, predict
from ladle.clip.files import csv_list, image_folder, shard_set, webdataset_available
from ladle.clip.finetune import finetune
from ladle.clip.models import create_clip
from ladle.clip.zeroshot import build_zeroshot_classifier

TEMPLATES = ["the digit {c}."]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    clip, tok = create_clip("ladle-tiny-clip")
    return build_zeroshot_classifier(clip, tok, list(DIGIT_NAMES), TEMPLATES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    g = np.random.default_rng(0)
    for i in range(8):
        d = root / DIGIT_NAMES[i % 3]
        d.mkdir(exist_ok=True)
        Image.fromarray(g.integers(0, 255, (40 + i, 36, 3), dtype=np.uint8)).save(
            d / f"{i}.jpg", quality=90)
    return root


def test_files_stream_through_open_clips_own_preprocess(model, folder):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    fs = image_folder(folder, classnames=list(DIGIT_NAMES))
    assert len(fs) == 8 and fs.class_subset == [0, 1, 2]
    # The evaluation transform is open_clip's preprocess_val for this model's config.
    cfg = open_clip.get_model_preprocess_cfg(model.image_encoder)
    val = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    from ladle.clip.loaders import eval_batches

    inputs = torch.stack([val(Image.open(p).convert("RGB")) for p in fs.paths])
    streamed = torch.cat([x for x, _, _ in eval_batches(fs, 3, model.preprocess)])
    assert torch.equal(streamed, inputs)  # bit for bit open_clip's preprocess_val
    with torch.no_grad():
        expected = torch.cat([model(x[None]) for x in inputs])
    serial = predict(model, fs, batch_size=3)
    torch.testing.assert_close(serial, expected, rtol=1e-5, atol=1e-5)
    # Two DataLoader workers with prefetching give the same logits, in order.
    workers = predict(model, fs, batch_size=3, loader={"workers": 2, "prefetch_factor": 2})
    assert torch.equal(workers, serial)
    res = evaluate_model(model, {"id": fs, "shift": fs.subset(range(4), "shift")},
                         id_name="id", loader={"workers": 2})
    assert set(res) >= {"id", "shift", "avg_ood"} and 0.0 <= res["shift"] <= 1.0


def test_csv_is_decoded_lazily_and_refuses_unknown_labels(tmp_path, folder):
    rows = ["path,label", "missing.jpg,one"] + [
        f"{p},{DIGIT_NAMES[i % 3]}" for i, p in enumerate(sorted(folder.rglob("*.jpg")))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    fs = csv_list(tmp_path / "list.csv", list(DIGIT_NAMES))  # nothing opened yet
    assert len(fs) == 9 and fs.labels[0] == 1
    ds = fs.dataset(lambda im: torch.zeros(1))
    assert ds[1][1] == 0  # decoded on access
    with pytest.raises(FileNotFoundError):
        ds[0]
    (tmp_path / "bad.csv").write_text("a.jpg,platypus\n")
    with pytest.raises(ValueError, match="platypus"):
        csv_list(tmp_path / "bad.csv", list(DIGIT_NAMES))


def test_webdataset_shards_are_optional(tmp_path):
    if webdataset_available():
        pytest.skip("webdataset is installed; the missing-package message is not reachable")
    with pytest.raises(ValueError, match="webdataset"):
        shard_set(str(tmp_path / "shard-0.tar"), list(DIGIT_NAMES))
    with pytest.raises(ValueError, match="webdataset"):
        load_dataset(str(tmp_path / "shard-0.tar"), None, list(DIGIT_NAMES))


def test_class_subsets_and_maps(tmp_path, folder):
    r, a = class_subset("imagenet-r"), class_subset("imagenet-a")
    assert len(r) == len(set(r)) == 200 and len(a) == len(set(a)) == 200
    assert r[:5] == [1, 2, 4, 6, 8] and a[:5] == [6, 11, 13, 15, 17] and max(r + a) < 1000
    (tmp_path / "map.json").write_text(json.dumps({"0": 0, "1": 0, "2": 1}))
    (tmp_path / "sub.txt").write_text("2\n0\n")
    ds = load_dataset({"path": str(folder), "name": "objnet",
                       "class_map": str(tmp_path / "map.json"),
                       "class_subset": str(tmp_path / "sub.txt")}, None, list(DIGIT_NAMES))
    assert ds.name == "objnet" and ds.class_map == {0: 0, 1: 0, 2: 1}
    assert ds.class_subset == [2, 0] == class_subset(tmp_path / "sub.txt")
    assert class_map({"3": "1"}) == {3: 1}
    with pytest.raises(ValueError, match="imagenet-r"):
        class_subset("imagenet-x")


def test_lc_features_are_a_memory_mapped_cache_extracted_once(model, tmp_path):
    from ladle.clip.data import prepare
    from ladle.clip.features import extract_features

    g = torch.Generator().manual_seed(3)
    data = ImageSet("d", (torch.rand(10, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.arange(10) % 10, list(DIGIT_NAMES))
    feats = extract_features(model, data, tmp_path, batch_size=4)
    assert isinstance(feats, np.memmap) and feats.shape == (10, model.head.weight.shape[1])
    files = list(tmp_path.glob("features-d-*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp*"))
    with torch.no_grad():
        manual = model.features(prepare(data.images, 32))
    torch.testing.assert_close(torch.from_numpy(np.array(feats)), manual)
    stamp = files[0].stat().st_mtime_ns
    assert np.array_equal(extract_features(model, data, tmp_path), feats)  # reused
    assert files[0].stat().st_mtime_ns == stamp
    res = finetune(model.__class__(model.image_encoder, torch.nn.Linear(
        model.head.in_features, 10, bias=False), 32, model.preprocess), data,
        FinetuneConfig(mode="lc", epochs=1, batch_size=4, lr=1e-2, warmup_steps=0),
        out_dir=tmp_path / "lc")
    assert res.final.is_file() and len(list((tmp_path / "lc" / "features").glob("*.npy"))) == 1


def test_torchvision_augmentations_and_batch_mixes():
    from torchvision.transforms import v2

    from ladle.clip.transforms import batch_mix, default_cfg, train_transform

    t = train_transform(default_cfg(16), "strong", magnitude=9, n_ops=2, hflip=True)
    kinds = [type(op) for op in t.transforms]
    assert v2.RandAugment in kinds and v2.RandomHorizontalFlip in kinds
    ra = next(op for op in t.transforms if isinstance(op, v2.RandAugment))
    assert (ra.num_ops, ra.magnitude) == (2, 9)
    assert v2.AutoAugment in [type(op) for op in train_transform(default_cfg(16),
                                                                 "autoaugment").transforms]
    assert v2.RandomResizedCrop in [type(op) for op in train_transform(default_cfg(16),
                                                                       "minimal").transforms]
    x = torch.rand(6, 3, 16, 16)
    for mix in (batch_mix(0.4, 0, 5), batch_mix(0, 1.0, 5), batch_mix(0.4, 1.0, 5)):
        xm, ym = mix(x, torch.arange(6) % 5)
        assert xm.shape == x.shape and ym.shape == (6, 5)
        torch.testing.assert_close(ym.sum(1), torch.ones(6))
    assert batch_mix(0, 0, 5) is None
    with pytest.raises(ValueError, match="augmentation"):
        FinetuneConfig(aug="heavy")


def test_gradient_accumulation_equals_one_big_batch(model, tmp_path):
    import copy

    g = torch.Generator().manual_seed(5)
    data = ImageSet("d", (torch.rand(32, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.arange(32) % 10, list(DIGIT_NAMES))
    # AdamW's first step with eps = 1 and no decay moves θ by -lr·g/(|g| + 1): a smooth
    # function of the gradient g, so equal steps mean equal gradients.
    base = {"epochs": 1, "batch_size": 32, "lr": 1e-2, "eps": 1.0, "weight_decay": 0.0,
            "grad_clip": 0.0, "warmup_steps": 0, "max_steps": 1, "aug": "none",
            "save_every_epoch": False, "eval_every_epoch": False}
    one, accum = copy.deepcopy(model), copy.deepcopy(model)
    finetune(one, data, FinetuneConfig(**base))
    finetune(accum, data, FinetuneConfig(**base, accum_steps=4))
    moved = 0.0
    for (name, p1), p4, p0 in zip(one.named_parameters(), accum.parameters(),
                                  model.parameters()):
        torch.testing.assert_close(p4, p1, rtol=1e-5, atol=1e-7, msg=name)
        moved = max(moved, float((p1 - p0).detach().abs().max()))
    assert moved > 1e-6  # the step did change the weights
    with pytest.raises(ValueError, match="accum_steps"):
        finetune(copy.deepcopy(model), data, FinetuneConfig(**{**base, "batch_size": 30},
                                                            accum_steps=4))
