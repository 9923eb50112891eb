"""``ladle extract-lora``: PEFT adapters from a fine-tune's delta by truncated SVD,
checked against torch.linalg.svd, and loaded with peft when it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ladle
from ladle.cli.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0):
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=30, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def _pair(tmp_path: Path, delta_rank: int | None, rank_of_norm: bool = False):
    """Base and fine-tune (fp32); 2-D deltas of exact rank ``delta_rank`` (None: full)."""
    base = _llama(0)
    base.save_pretrained(tmp_path / "base")
    tuned = _llama(0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.ndim == 2 and "embed" not in name and "lm_head" not in name:
                if delta_rank is None:
                    p += 0.1 * torch.randn(p.shape, generator=g)
                else:
                    u = torch.randn(p.shape[0], delta_rank, generator=g)
                    v = torch.randn(delta_rank, p.shape[1], generator=g)
                    p += 0.05 * (u @ v)
            elif rank_of_norm and p.ndim == 1:
                p += 1.0
    tuned.save_pretrained(tmp_path / "tuned")
    return base.state_dict(), tuned.state_dict()


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def test_exact_low_rank_delta_is_reconstructed(tmp_path):
    base, tuned = _pair(tmp_path, delta_rank=3)
    rc = main(["extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"), "--rank", "4",
               "-o", str(tmp_path / "lora"), "--device", "cpu", "--quiet"])
    assert rc == 0
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    factors = _adapter(tmp_path / "lora")
    targets = [n for n, p in tuned.items()
               if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    assert sorted(config["target_modules"]) == sorted(n.removesuffix(".weight") for n in targets)
    for name in targets:
        module = name.removesuffix(".weight")
        a = factors[f"base_model.model.{module}.lora_A.weight"]
        b = factors[f"base_model.model.{module}.lora_B.weight"]
        assert a.dtype == torch.float32 and a.shape == (4, tuned[name].shape[1])
        delta = tuned[name] - base[name]
        torch.testing.assert_close(b @ a, delta, rtol=1e-4, atol=1e-5)


def test_general_delta_gives_the_best_rank_r_approximation(tmp_path):
    base, tuned = _pair(tmp_path, delta_rank=None, rank_of_norm=True)
    with pytest.warns(ladle.errors.LadleWarning, match="leaves them out"):
        report = ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "lora",
                                    rank=5, device="cpu", progress=False)
    assert report.n_modules == 14 and any("norm" in n for n in report.skipped)
    factors = _adapter(tmp_path / "lora")
    for name, t in tuned.items():
        key = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if key not in factors:
            continue
        delta = (t - base[name]).float()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        best = u[:, :5] @ torch.diag(s[:5]) @ vh[:5]
        got = factors[key.replace("lora_A", "lora_B")] @ factors[key]
        torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-5)
        # and it is no better than the SVD says it can be: the residual is the tail
        residual = torch.linalg.matrix_norm(delta - got)
        torch.testing.assert_close(residual, torch.sqrt((s[5:] ** 2).sum()), rtol=1e-3,
                                   atol=1e-5)


def test_dtype_rank_pattern_lowrank_and_errors(tmp_path, capsys):
    _pair(tmp_path, delta_rank=2)
    ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "lora", rank=20,
                       dtype="bf16", method="lowrank", device="cpu", progress=False)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    # a weight's own rank is capped by its shape: 8 x 16 (k/v, one kv head), else 16
    assert config["r"] == 20
    assert config["rank_pattern"]["model.layers.0.self_attn.k_proj"] == 8
    assert config["rank_pattern"]["model.layers.1.mlp.up_proj"] == 16
    factors = _adapter(tmp_path / "lora")
    assert {t.dtype for t in factors.values()} == {torch.bfloat16}
    # errors: one line, no output, inputs untouched
    for args, message in [
        (["--rank", "0"], "rank must be a positive integer"),
        (["--rank", "2", "--device", "cuda:7"] if not torch.cuda.is_available()
         else ["--rank", "2", "--dtype", "int8"], "no CUDA device|unsupported output dtype"),
        (["--rank", "2", "--include", "nothing*"], "no 2-D weights"),
    ]:
        capsys.readouterr()
        rc = main(["extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"),
                   "-o", str(tmp_path / "bad"), "--quiet", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("ladle: error:"), err
        import re

        assert re.search(message, err), err
        assert not (tmp_path / "bad").exists()
    rc = main(["extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"), "--rank", "2",
               "-o", str(tmp_path / "base"), "--quiet"])
    assert rc == 2 and (tmp_path / "base" / "model.safetensors").exists()


def test_adapter_loads_with_peft(tmp_path):
    peft = pytest.importorskip("peft")
    _, tuned_sd = _pair(tmp_path, delta_rank=2)
    ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "lora", rank=2,
                       device="cpu", progress=False)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "lora").merge_and_unload()
    got = merged.state_dict()
    for name, t in tuned_sd.items():
        torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-5)
