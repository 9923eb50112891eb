"""ladle.load_into / ladle.save / live inputs, checked byte for byte against torch."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import ladle
from ladle.cli.cli import main
from ladle.errors import MismatchError

from toy_models import TiedNet, mlp


def _ref(states, weights):
    """The arithmetic contract in torch: fp32 products and sums in input order."""
    acc = None
    for s, w in zip(states, weights):
        term = torch.tensor(w, dtype=torch.float32) * s.float()
        acc = term if acc is None else acc + term
    return acc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_into_matches_contract(tmp_path, dtype):
    a, b, target = mlp(1, dtype=dtype), mlp(2, dtype=dtype), mlp(3, dtype=dtype)
    pa = ladle.save(a, tmp_path / "a.safetensors")
    pb = ladle.save(b, tmp_path / "b")  # directory output
    ladle.load_into(target, [pa, pb], [0.3, 0.7])
    sa, sb = a.state_dict(), b.state_dict()
    for name, value in target.state_dict().items():
        assert torch.equal(value, _ref([sa[name], sb[name]], [0.3, 0.7]).to(dtype)), name


def test_tied_weights_written_once_and_stay_tied(tmp_path):
    a, b, target = TiedNet(), TiedNet(), TiedNet()
    with torch.no_grad():
        b.embed.weight.mul_(3)
        b.norm.num_batches_tracked.fill_(0)
    path = ladle.save(a, tmp_path / "a.safetensors")
    names = set(load_file(str(path)))
    assert "embed.weight" in names and "out.weight" not in names  # stored once
    ladle.load_into(target, [path, b], [0.5, 0.5])
    assert target.out.weight is target.embed.weight
    expect = _ref([a.embed.weight.detach(), b.embed.weight.detach()], [0.5, 0.5])
    assert torch.equal(target.embed.weight.detach(), expect)
    # a state dict that lists both names also loads (strict) without double writes
    ladle.load_into(target, [a.state_dict()], [1.0])
    assert torch.equal(target.embed.weight, a.embed.weight)


def test_nonfloat_buffers_copied_and_checked():
    a, b, target = TiedNet(), TiedNet(), TiedNet()
    a.norm.num_batches_tracked.fill_(7)
    b.norm.num_batches_tracked.fill_(7)
    ladle.load_into(target, [a, b], [0.5, 0.5])
    assert target.norm.num_batches_tracked.item() == 7
    b.norm.num_batches_tracked.fill_(8)
    with pytest.raises(MismatchError, match="num_batches_tracked"):
        ladle.load_into(target, [a, b], [0.5, 0.5], int_policy="error")
    ladle.load_into(target, [a, b], [0.5, 0.5], int_policy="first")
    assert target.norm.num_batches_tracked.item() == 7


def test_strict_key_diff_and_prefix_mapping(tmp_path):
    a, target = mlp(1), mlp(2)
    prefixed = {"module." + k: v for k, v in a.state_dict().items()}
    ladle.load_into(target, [prefixed], [1.0])  # automatic 'module.' strip
    assert torch.equal(target[0].weight, a[0].weight)
    partial = {k: v for k, v in a.state_dict().items() if k != "2.bias"}
    partial["extra.w"] = torch.zeros(2)
    with pytest.raises(MismatchError) as err:
        ladle.load_into(target, [partial], [1.0])
    assert "'2.bias'" in str(err.value) and "'extra.w'" in str(err.value)
    before = target[2].bias.clone()
    ladle.load_into(target, [partial], [1.0], strict=False)
    assert torch.equal(target[2].bias, before)
    wrapped = {"visual." + k: v for k, v in a.state_dict().items()}
    wrapped["text.w"] = torch.zeros(1)
    ladle.load_into(target, [wrapped], [1.0], key_map={"visual.": ""}, strict=False)
    bad = dict(a.state_dict(), **{"0.weight": torch.zeros(3, 3)})
    with pytest.raises(MismatchError, match=r"'0.weight' has shape \[3, 3\]"):
        ladle.load_into(target, [bad], [1.0])


def test_live_inputs_are_read_in_place(tmp_path):
    zs, ft = mlp(1), mlp(2)
    ptr = zs[0].weight.data_ptr()
    ladle.interpolate(zs, ft, 0.25, tmp_path / "w.safetensors", progress=False)
    out = load_file(str(tmp_path / "w.safetensors"))
    expect = _ref([zs[0].weight.detach(), ft[0].weight.detach()], [0.75, 0.25])
    assert torch.equal(out["0.weight"], expect)
    target = copy.deepcopy(zs)
    ladle.load_into(target, [target, ft.state_dict()], [0.75, 0.25])  # reads itself in place
    assert torch.equal(target[0].weight.detach(), expect)
    assert zs[0].weight.data_ptr() == ptr


def test_save_sharded_roundtrip_and_pt_inputs(tmp_path):
    a = mlp(1, width=64)
    out = ladle.save(a, tmp_path / "sharded", max_shard_size=2000)
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 2
    target = mlp(5, width=64)
    ladle.load_into(target, [out])
    assert all(torch.equal(x, y) for x, y in zip(target.parameters(), a.parameters()))
    # open_clip-style .pt: {"state_dict": {"module." + name: ...}}
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in a.state_dict().items()}},
               tmp_path / "ckpt.pt")
    target = mlp(6, width=64)
    ladle.load_into(target, [tmp_path / "ckpt.pt"])
    assert torch.equal(target[2].weight, a[2].weight)
    assert main(["convert", str(tmp_path / "ckpt.pt"), "-o", str(tmp_path / "conv"),
                 "--max-shard-size", "3000", "--quiet"]) == 0
    conv = ladle.open(tmp_path / "conv")
    assert set(conv.tensors) == set(a.state_dict())


def test_tiny_open_clip_model(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                        "layers": 1}}
    (tmp_path / "ladle-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "ladle-tiny-clip.json"))
    torch.manual_seed(0)
    zs = open_clip.create_model("ladle-tiny-clip", pretrained=None)
    ft = open_clip.create_model("ladle-tiny-clip", pretrained=None)
    torch.save({"state_dict": {"module." + k: v for k, v in ft.state_dict().items()}},
               tmp_path / "ft.pt")
    save_file(zs.state_dict(), str(tmp_path / "zs.safetensors"))
    model = open_clip.create_model("ladle-tiny-clip", pretrained=None)
    ladle.load_into(model, [tmp_path / "zs.safetensors", tmp_path / "ft.pt"], [0.5, 0.5])
    for name, value in model.state_dict().items():
        if name == "attn_mask":
            continue
        expect = _ref([zs.state_dict()[name], ft.state_dict()[name]], [0.5, 0.5])
        assert torch.equal(value, expect), name
    # only the image tower: a visual-only module from the full checkpoint
    visual = open_clip.create_model("ladle-tiny-clip", pretrained=None).visual
    ladle.load_into(visual, [tmp_path / "ft.pt"], strict=False)
    assert torch.equal(visual.conv1.weight, ft.visual.conv1.weight)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), model.encode_image(image))


def test_load_into_refuses_weights_merge_refuses(tmp_path):
    a = mlp(1)
    pa = ladle.save(a, tmp_path / "a.safetensors")
    target = mlp(3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for weights in ([1e40, 0.0], [float("nan"), 1.0], [3.5e38, 0.0]):
        with pytest.raises(ladle.errors.LadleValueError, match="finite in fp32"):
            ladle.merge([pa, pa], weights, tmp_path / "m.safetensors", progress=False)
        with pytest.raises(ladle.errors.LadleValueError, match="finite in fp32"):
            ladle.load_into(target, [pa, pa], weights)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_load_into_bumps_version_counters_for_autograd(tmp_path):
    target = mlp(3)
    pa = ladle.save(mlp(1), tmp_path / "a.safetensors")
    weight = next(target.parameters())
    version = weight._version
    loss = (weight * weight).sum()  # saves weight for backward
    ladle.load_into(target, [pa])
    assert weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # A backward through values computed after the load works.
    (weight * weight).sum().backward()


@pytest.mark.parametrize("order", ["model", "reversed"])
def test_tied_values_that_differ_resolve_as_load_state_dict(tmp_path, order):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in TiedNet().state_dict().items()}
    state["embed.weight"] = torch.full_like(state["embed.weight"], 1.0)
    state["out.weight"] = torch.full_like(state["out.weight"], 2.0)
    if order == "reversed":
        state = dict(reversed(list(state.items())))
    path = tmp_path / "tied.safetensors"
    save_file(state, str(path))
    expected, got = TiedNet(), TiedNet()
    expected.load_state_dict(state)
    ladle.load_into(got, [path])
    assert got.out.weight is got.embed.weight
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
