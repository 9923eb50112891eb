"""``ladle extract-lora`` options matching mergekit-extract-lora's: ``--embed-lora``
(embeddings as PEFT lora_embedding_A/B of the transposed delta, output heads as plain
LoRA), ``--modules-to-save`` (full-rank modules) and ``--sv-epsilon`` (singular
values at or below it dropped); checked with torch and a peft round trip."""

from __future__ import annotations

import json

import pytest
from test_lora import _adapter, _llama

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleValueError, LadleWarning

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _pair(tmp_path):
    """Base and fine-tune: rank-2 deltas on every 2-D weight (embeddings and lm_head
    included) and a changed final norm."""
    base = _llama(0)
    base.save_pretrained(tmp_path / "base")
    tuned = _llama(0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.ndim == 2:
                u = torch.randn(p.shape[0], 2, generator=g)
                p += 0.05 * (u @ torch.randn(2, p.shape[1], generator=g))
            elif name == "model.norm.weight":
                p += 0.5
    tuned.save_pretrained(tmp_path / "tuned")
    return base.state_dict(), tuned.state_dict()


def test_embed_lora_and_modules_to_save_round_trip_with_peft(tmp_path):
    base_sd, tuned_sd = _pair(tmp_path)
    rc = main(["extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"), "--rank", "2",
               "-o", str(tmp_path / "lora"), "--device", "cpu", "--embed-lora",
               "--modules-to-save", "norm", "--quiet"])
    assert rc == 0
    factors = _adapter(tmp_path / "lora")
    a = factors["base_model.model.model.embed_tokens.lora_embedding_A"]
    b = factors["base_model.model.model.embed_tokens.lora_embedding_B"]
    assert a.shape == (2, 30) and b.shape == (16, 2)  # (r, vocab), (dim, r)
    delta = tuned_sd["model.embed_tokens.weight"] - base_sd["model.embed_tokens.weight"]
    torch.testing.assert_close(b @ a, delta.T, rtol=1e-4, atol=1e-5)
    head = factors["base_model.model.lm_head.lora_B.weight"] @ \
        factors["base_model.model.lm_head.lora_A.weight"]
    torch.testing.assert_close(head, tuned_sd["lm_head.weight"] - base_sd["lm_head.weight"],
                               rtol=1e-4, atol=1e-5)
    assert torch.equal(factors["base_model.model.model.norm.weight"],
                       tuned_sd["model.norm.weight"])  # full rank, the fine-tune's bytes
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.norm"]  # full names: PEFT matches suffixes
    assert {"model.embed_tokens", "lm_head"} <= set(config["target_modules"])
    peft = pytest.importorskip("peft")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "lora").merge_and_unload()
    got = merged.state_dict()
    for name, t in tuned_sd.items():
        torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-5, msg=name)
    # Without the options the embeddings, head and norm are left out (today's default).
    with pytest.warns(LadleWarning, match="not 2-D non-embedding weights"):
        ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "plain", rank=2,
                           device="cpu", progress=False)
    plain = _adapter(tmp_path / "plain")
    assert not any("embed" in k or "lm_head" in k or "model.norm" in k for k in plain)


def test_sv_epsilon_drops_small_singular_values(tmp_path):
    base_sd, tuned_sd = _pair(tmp_path)
    ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "eps", rank=6,
                       sv_epsilon=1e-3, device="cpu", progress=False)
    factors = _adapter(tmp_path / "eps")
    config = json.loads((tmp_path / "eps" / "adapter_config.json").read_text())
    for name, t in tuned_sd.items():
        key = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if key not in factors:
            continue
        delta = (t - base_sd[name]).float()
        s = torch.linalg.svdvals(delta)
        kept = int((s > 1e-3).sum())
        assert kept == 2 and factors[key].shape[0] == kept, name
        assert config["rank_pattern"][name.removesuffix(".weight")] == kept
    # Without it the rank is min(6, shape): small singular values (noise) kept.
    ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "all", rank=6,
                       device="cpu", progress=False)
    assert _adapter(tmp_path / "all")[
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].shape[0] == 6


def test_option_errors(tmp_path, capsys):
    _pair(tmp_path)
    args = [str(tmp_path / "base"), str(tmp_path / "tuned"), "--rank", "2", "--device", "cpu",
            "-o", str(tmp_path / "bad"), "--quiet"]
    for extra, message in [(["--sv-epsilon", "-1"], "sv_epsilon must be a finite number"),
                           (["--sv-epsilon", "nan"], "sv_epsilon must be a finite number"),
                           (["--modules-to-save", "nope"], r"modules_to_save \['nope'\] match"),
                           (["--sv-epsilon", "1e9"], "lost all its singular values")]:
        capsys.readouterr()
        assert main(["extract-lora", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ladle: error:") and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(message, err), err
        assert not (tmp_path / "bad").exists()
    with pytest.raises(LadleValueError, match="sv_epsilon"):
        ladle.extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "bad", rank=2,
                           sv_epsilon=True, progress=False)
