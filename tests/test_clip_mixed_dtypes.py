"""The canonical WiSE-FT case: an fp16 zero-shot open_clip model with an fp32
fine-tuned copy, from the CLI and through wiseft_sweep (what ``ladle clip wiseft``
runs), bit for bit against the contract reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import ladle
from ladle.cli import main
from ladle.clip.models import create_clip

from reference import combine
from st_io import read_checkpoint


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
