"""The CUDA paths of the harness: staged streaming into device tensors
(``load_into`` / ``wiseft_sweep`` on CUDA modules), autocast and channels_last.

The staging logic (chunking, tied weights, key checks, which targets are written) is
device-independent and runs here on CPU tensors; the tests marked ``gpu`` run the
same on a CUDA device and are skipped without one."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import ladle
from ladle.engine.live_cuda import StagedLoader, on_cuda
from ladle.errors import MismatchError
from ladle.formats.sources import open_input

from toy_models import TiedNet

HAVE_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU")]


@pytest.fixture
def endpoints(tmp_path):
    torch.manual_seed(0)
    a, b = TiedNet(), TiedNet()
    b.norm.running_mean.fill_(3.0)
    b.norm.num_batches_tracked.fill_(7)
    return ladle.save(a, tmp_path / "a.safetensors"), ladle.save(b, tmp_path / "b.safetensors")


def test_staged_loader_matches_the_cpu_load_bit_for_bit(endpoints):
    expected = TiedNet()
    ladle.load_into(expected, list(endpoints), [0.3, 0.7], int_policy="first")
    target = TiedNet()
    # A 64-byte budget puts every tensor in a chunk of its own: the pool is reused.
    staged = StagedLoader(target, [open_input(p) for p in endpoints], memory_budget=64)
    assert len(staged.parts) > 3
    assert staged.pool.numel() <= max(t.numel() * t.element_size()
                                      for t in target.state_dict().values()) + 64
    staged.run([0.3, 0.7], int_policy="first")
    for name, t in expected.state_dict().items():
        assert torch.equal(target.state_dict()[name], t), name
    assert target.out.weight.data_ptr() == target.embed.weight.data_ptr()  # still tied


def test_staged_loader_keys_and_skipped_buffers(endpoints, tmp_path):
    target = TiedNet()
    before = target.norm.num_batches_tracked.clone()
    staged = StagedLoader(target, [open_input(endpoints[1])], memory_budget=64)
    staged.run([1.0], nonfloats=False)
    assert torch.equal(target.norm.num_batches_tracked, before)  # skipped: not overwritten
    assert torch.all(target.norm.running_mean == 3.0)
    partial = {k: v for k, v in TiedNet().state_dict().items() if k != "hidden.bias"}
    path = ladle.save(partial, tmp_path / "partial.safetensors")
    with pytest.raises(MismatchError, match="hidden.bias"):
        StagedLoader(TiedNet(), [open_input(path)])
    extra = {**TiedNet().state_dict(), "stray": torch.zeros(2)}
    path = ladle.save(extra, tmp_path / "extra.safetensors")
    with pytest.raises(MismatchError, match="stray"):
        StagedLoader(TiedNet(), [open_input(path)])


def test_cpu_modules_take_the_engine_path_and_autocast_is_cuda_only():
    assert not on_cuda(TiedNet()) and not on_cuda("model.safetensors")
    from ladle.clip.precision import autocast_context, check_autocast

    x = torch.randn(4, 4)
    with autocast_context("cpu", "bf16"):
        y = x @ x
    assert y.dtype == torch.float32 and torch.equal(y, x @ x)
    with pytest.raises(ValueError, match="autocast"):
        check_autocast("fp8")


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU")
def test_load_into_and_sweep_on_cuda_equal_the_cpu(endpoints, alpha):
    cpu = TiedNet()
    ladle.load_into(cpu, list(endpoints), [1 - alpha, alpha], int_policy="first")
    dev = TiedNet().cuda()
    ladle.load_into(dev, list(endpoints), [1 - alpha, alpha], int_policy="first")
    for name, t in cpu.state_dict().items():
        assert torch.equal(dev.state_dict()[name].cpu(), t), name
    swept = TiedNet().cuda()
    (pt,) = ladle.wiseft_sweep(swept, *endpoints, [alpha],
                               evaluate=lambda m: copy.deepcopy(m.state_dict()))
    for name, t in cpu.state_dict().items():
        assert torch.equal(pt.score[name].cpu(), t), name


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU")
def test_finetune_and_predict_on_cuda_with_autocast_and_channels_last():
    pytest.importorskip("open_clip")
    from ladle.clip.config import FinetuneConfig
    from ladle.clip.data import DIGIT_NAMES, ImageSet
    from ladle.clip.evaluate import predict
    from ladle.clip.finetune import finetune
    from ladle.clip.models import create_clip
    from ladle.clip.zeroshot import build_zeroshot_classifier

    torch.manual_seed(0)
    clip, tok = create_clip("ladle-tiny-clip")
    model = build_zeroshot_classifier(clip, tok, list(DIGIT_NAMES), ["the digit {c}."])
    g = torch.Generator().manual_seed(1)
    data = ImageSet("d", (torch.rand(32, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.arange(32) % 10, list(DIGIT_NAMES))
    fp32 = predict(model, data)
    for mode in ("bf16", "fp16"):
        m = copy.deepcopy(model).cuda()
        got = predict(m, data, autocast=mode, channels_last=True)
        assert got.dtype == torch.float32
        assert (got.argmax(1) == fp32.argmax(1)).float().mean() > 0.8
        before = m.head.weight.detach().clone()
        finetune(m, data, FinetuneConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=0,
                                         max_steps=2, device="cuda", autocast=mode,
                                         channels_last=True, accum_steps=2,
                                         save_every_epoch=False, eval_every_epoch=False))
        assert not torch.equal(m.head.weight.detach().cpu(), before.cpu())
