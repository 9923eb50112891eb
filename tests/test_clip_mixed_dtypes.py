"""The canonical WiSE-FT case: an fp16 zero-shot open_clip model with an fp32
fine-tuned copy, from the CLI and through wiseft_sweep (what ``ladle clip wiseft``
runs), bit for bit against the contract reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import ladle
from ladle.cli.cli import main
from ladle.clip.models import create_clip

from reference import combine
from st_io import read_checkpoint
from toy_models import tiny_image_folder


@pytest.fixture(scope="module")
def zs16_ft32(tmp_path_factory):
    torch.manual_seed(0)
    clip, _ = create_clip("ladle-tiny-clip")
    d = tmp_path_factory.mktemp("clip")
    ft = ladle.save(clip, d / "ft32.safetensors")
    zs = ladle.save(clip.half(), d / "zs16.safetensors")  # OpenAI CLIP ships fp16
    return clip.float(), zs, ft


def test_fp16_zeroshot_with_fp32_finetuned_from_cli(zs16_ft32, tmp_path):
    _, zs, ft = zs16_ft32
    out = tmp_path / "wiseft"
    assert main(["merge", str(zs), str(ft), "--alpha", "0.3", "-o", str(out), "--quiet"]) == 0
    a, b, got = read_checkpoint(zs), read_checkpoint(ft), read_checkpoint(out)
    assert {v[0] for v in a.values() if v[0].startswith("F")} == {"F16"}
    for name, (dtype, _, raw) in got.items():
        if not dtype.startswith("F"):
            continue
        assert dtype == "F32", name  # widest input dtype
        assert raw == combine([a[name][2], b[name][2]], ["F16", "F32"], [0.7, 0.3], "F32"), name
    assert main(["verify", str(out)]) == 0


def test_fp16_zeroshot_through_wiseft_sweep(zs16_ft32):
    model, zs, ft = zs16_ft32
    a, b = read_checkpoint(zs), read_checkpoint(ft)
    name = "visual.proj" if "visual.proj" in a else next(n for n in a if n.startswith("visual"))
    seen = []
    ladle.wiseft_sweep(model, zs, ft, [0.5],
                       evaluate=lambda m: seen.append(m.state_dict()[name].clone()))
    want = combine([a[name][2], b[name][2]], ["F16", "F32"], [0.5, 0.5], "F32")
    assert seen[0].contiguous().numpy().tobytes() == want


def test_clip_wiseft_cli_with_fp16_zeroshot_and_fp32_finetuned(tmp_path, monkeypatch):
    """``ladle clip wiseft --zeroshot zs16 --finetuned ft32``: the sweep runs and the
    models it evaluates at α = 0 and 1 are the two inputs, bit for bit (α = 0.5: the
    contract's mixed-dtype combine)."""
    import copy
    import json

    from ladle.clip.experiment import Experiment
    from ladle.clip.zeroshot import build_zeroshot_classifier

    from reference import to_f32

    names, templates = ["zero", "one"], ["a photo of the {c}.", "the {c}."]
    folder = tiny_image_folder(tmp_path / "imgs", names)
    cfg = {"model": {"name": "ladle-tiny-clip"}, "templates": templates,
           "data": {"train": folder, "test": folder, "classnames": names,
                    "shifts": [{"path": folder, "name": "shift"}]},
           "heldout": {"fraction": 0.34, "seed": 0}, "alphas": [0.0, 0.5, 1.0],
           "ensembles": ["logit"]}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    clip, tok = create_clip("ladle-tiny-clip")
    theta0 = build_zeroshot_classifier(clip, tok, names, templates)
    theta1 = copy.deepcopy(theta0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in theta1.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    zs = ladle.save(theta0.half(), tmp_path / "zs16.safetensors")
    ft = ladle.save(theta1, tmp_path / "ft32.safetensors")
    seen = []
    evaluate = Experiment.evaluate

    def spy(self, module, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return evaluate(self, module, *args, **kwargs)

    monkeypatch.setattr(Experiment, "evaluate", spy)
    out = tmp_path / "run"
    assert main(["clip", "wiseft", "--config", str(tmp_path / "cfg.json"), "--out", str(out),
                 "--quiet", "--zeroshot", str(zs), "--finetuned", str(ft)]) == 0
    assert (out / "wiseft_report.md").is_file() and (out / "wiseft.png").is_file()
    a, b = read_checkpoint(zs), read_checkpoint(ft)
    assert {v[0] for v in a.values()} == {"F16"} and {v[0] for v in b.values()} == {"F32"}
    assert len(seen) == 3  # α = 0, 0.5, 1 (the ensemble reuses the endpoints' logits)
    for name in a:
        got = [s[name].contiguous().numpy().tobytes() for s in seen]
        assert got[0] == to_f32(a[name][2], "F16").tobytes(), name
        assert got[2] == b[name][2], name
        assert got[1] == combine([a[name][2], b[name][2]], ["F16", "F32"], [0.5, 0.5], "F32")
