"""An HF-layout output of transformers checkpoints loads with from_pretrained."""

from __future__ import annotations

import pytest

import ladle

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_llama(seed: int):
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=100, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16)


def test_wiseft_output_loads_in_transformers(tmp_path):
    m0, m1 = _tiny_llama(0), _tiny_llama(1)
    m0.save_pretrained(tmp_path / "m0", max_shard_size="20KB")
    m1.save_pretrained(tmp_path / "m1")
    ladle.interpolate(tmp_path / "m0", tmp_path / "m1", 0.25, tmp_path / "out",
                      max_shard_size="30KB", progress=False)
    assert (tmp_path / "out" / "config.json").exists()
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out",
                                                           dtype=torch.bfloat16)
    s0, s1 = m0.state_dict(), m1.state_dict()
    for name, got in merged.state_dict().items():
        ref = (s0[name].float() * 0.75 + s1[name].float() * 0.25).to(torch.bfloat16)
        assert torch.equal(got.view(torch.int16), ref.view(torch.int16)), name
    ids = torch.tensor([[1, 2, 3]])
    assert merged(ids).logits.shape == (1, 3, 100)
