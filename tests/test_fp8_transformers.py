"""Round trip of a ``--dtype fp8`` merge through transformers: two tiny Llamas saved
in the DeepSeek FP8 layout (F8_E4M3 Linear weights + F32 ``weight_scale_inv`` of
16x16 blocks, ``quantization_config`` quant_method fp8), merged by ladle, load with
``from_pretrained`` (FineGrainedFP8Config(dequantize=True), CPU) and every loaded
weight equals torch's dequantization of ladle's codes and fresh scales, which
equal torch's requantization of the fp32 merge."""

from __future__ import annotations

import json

import pytest

import ladle

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' FP8 loader needs it
safetensors_torch = pytest.importorskip("safetensors.torch")

BLOCK = 16
QUANT = {"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK], "fmt": "e4m3",
         "activation_scheme": "dynamic"}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def requantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F8_E4M3 codes, F32 scale_inv) of fp32 ``x``: s = amax / 448 per block (1 if 0)."""
    rows, cols = x.shape
    blocks = x.reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
    s = blocks.abs().amax(dim=(1, 3)) / 448.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    full = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return (x / full).to(torch.float8_e4m3fn), s


def dequantize(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)


def fp8_llama(directory, seed: int) -> dict[str, torch.Tensor]:
    """A tiny Llama saved with FP8 Linear weights; returns its state dict as saved."""
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=100, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    tensors = {}
    for name, t in model.state_dict().items():
        if name.split(".")[-2] in LINEARS:
            tensors[name], tensors[name + "_scale_inv"] = requantize(t.float())
        else:
            tensors[name] = t.contiguous()
    directory.mkdir()
    safetensors_torch.save_file(tensors, str(directory / "model.safetensors"),
                                metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_dict()
                                                      | {"quantization_config": QUANT}))
    return tensors


def test_fp8_merge_loads_in_transformers(tmp_path):
    t0, t1 = fp8_llama(tmp_path / "m0", 0), fp8_llama(tmp_path / "m1", 1)
    out = tmp_path / "out"
    ladle.interpolate(tmp_path / "m0", tmp_path / "m1", 0.25, out, dtype="fp8", progress=False)
    assert json.loads((out / "config.json").read_text())["quantization_config"] == QUANT
    written = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(t0)
    merged = transformers.LlamaForCausalLM.from_pretrained(
        out, dtype=torch.bfloat16,
        quantization_config=transformers.FineGrainedFP8Config(dequantize=True))
    loaded = merged.state_dict()
    w0, w1 = torch.tensor(0.75), torch.tensor(0.25)
    n_fp8 = 0
    for name, got in loaded.items():
        if name + "_scale_inv" not in written:
            continue
        n_fp8 += 1
        fp32 = (w0 * dequantize(t0[name], t0[name + "_scale_inv"])
                + w1 * dequantize(t1[name], t1[name + "_scale_inv"]))
        q, s = requantize(fp32)
        assert torch.equal(written[name].view(torch.uint8), q.view(torch.uint8)), name
        assert torch.equal(written[name + "_scale_inv"], s), name
        want = dequantize(q, s).to(torch.bfloat16)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), name
    assert n_fp8 == 2 * len(LINEARS)
    assert merged(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 100)
