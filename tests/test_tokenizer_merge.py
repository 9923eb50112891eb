"""``tokenizer_source: base|union|MODEL`` and ``tokenizer:`` blocks: the output
vocabulary, the permuted embedding rows (mergekit's rules) and the config, checked
against a plain-numpy reference of those rules written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ladle.cli.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from safetensors.numpy import load_file, save_file

DIM = 6
F32 = np.float32


def _model(path: Path, words: list[str], added: list[str], seed: int) -> dict:
    """A tiny model with a WordLevel tokenizer (``words`` + ``added`` special tokens)."""
    path.mkdir()
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": added})
    fast.save_pretrained(path)
    n = len(fast.get_vocab())
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((n, DIM)).astype(F32),
               "model.layers.0.mlp.weight": rng.standard_normal((DIM, DIM)).astype(F32),
               "model.norm.weight": rng.standard_normal(DIM).astype(F32),
               "lm_head.weight": rng.standard_normal((n, DIM)).astype(F32)}
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": n,
                                                      "num_hidden_layers": 1}))
    return {"vocab": fast.get_vocab(), "tensors": tensors}


@pytest.fixture
def two_models(tmp_path):
    base = _model(tmp_path / "base", ["a", "b", "c"], ["<|sys|>"], 0)
    ft = _model(tmp_path / "ft", ["c", "a", "d"], ["<|x|>", "<|sys|>"], 1)
    return tmp_path, base, ft


def _run(tmp_path: Path, recipe: dict, name: str = "out") -> Path:
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    return out


def _reference_rows(out_vocab: dict[str, int], models: list[dict], base: int | None,
                    tokens: dict, name: str, size: int) -> list[np.ndarray]:
    """Each model's permuted embedding by mergekit's PermutedEmbeddings rules."""
    perm = [{tok: m["vocab"].get(tok, -1) for tok in out_vocab} for m in models]
    result = []
    for k, m in enumerate(models):
        emb = np.zeros((size, DIM), F32)
        for tok, i in out_vocab.items():
            have = [j for j in range(len(models)) if perm[j][tok] >= 0]
            cfg = tokens.get(tok, {})
            if perm[k][tok] >= 0 and not cfg.get("force"):
                emb[i] = m["tensors"][name][perm[k][tok]]
                continue
            src = cfg.get("source")
            if src == "zero":
                rows = []
            elif isinstance(src, tuple):  # (model index, row)
                rows = [models[src[0]]["tensors"][name][src[1]]]
            elif isinstance(src, int):
                rows = [models[src]["tensors"][name][perm[src][tok]]]
            elif len(have) == 1:
                rows = [models[have[0]]["tensors"][name][perm[have[0]][tok]]]
            elif base is not None and base in have:
                rows = [models[base]["tensors"][name][perm[base][tok]]]
            else:
                rows = [models[j]["tensors"][name][perm[j][tok]] for j in have]
            acc = np.zeros(DIM, F32)
            for r in rows:
                acc = acc + r
            emb[i] = acc / F32(len(rows)) if rows else acc
        if size > len(out_vocab):
            emb[len(out_vocab):] = (emb[:len(out_vocab)].astype(np.float64).sum(0)
                                    / len(out_vocab)).astype(F32)
        result.append(emb)
    return result


def _linear(x0, x1):
    return (F32(0.5) * x0 + F32(0.5) * x1).astype(F32)


def test_union_vocabulary_and_rows(two_models):
    tmp_path, base, ft = two_models
    out = _run(tmp_path, {"merge_method": "linear", "base_model": str(tmp_path / "base"),
                          "models": [{"model": str(tmp_path / "base"),
                                      "parameters": {"weight": 1.0}},
                                     {"model": str(tmp_path / "ft"),
                                      "parameters": {"weight": 1.0}}],
                          "tokenizer_source": "union", "chat_template": "chatml"})
    tok = transformers.AutoTokenizer.from_pretrained(out)
    vocab = tok.get_vocab()
    assert set(vocab) == set(base["vocab"]) | set(ft["vocab"])
    for t, i in base["vocab"].items():  # the base's ids are kept
        assert vocab[t] == i
    assert "<|x|>" in tok.all_special_tokens or "<|x|>" in tok.added_tokens_encoder
    assert "im_start" in (tok.chat_template or "")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab)
    got = load_file(str(out / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        r0, r1 = _reference_rows(vocab, [base, ft], 0, {}, name, len(vocab))
        assert got[name].shape == (len(vocab), DIM)
        np.testing.assert_array_equal(got[name], _linear(r0, r1), err_msg=name)
    w = "model.layers.0.mlp.weight"
    np.testing.assert_array_equal(got[w], _linear(base["tensors"][w], ft["tensors"][w]))


def test_tokenizer_block_tokens_force_and_padding(two_models):
    tmp_path, base, ft = two_models
    out = _run(tmp_path, {
        "merge_method": "linear",
        "models": [{"model": str(tmp_path / "base"), "parameters": {"weight": 1.0}},
                   {"model": str(tmp_path / "ft"), "parameters": {"weight": 1.0}}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 8, "tokens": {
            "<|x|>": {"source": {"kind": "zero"}},
            "a": {"source": str(tmp_path / "ft"), "force": True},
            "<|new|>": {"source": {"kind": "model_token", "model": str(tmp_path / "base"),
                                   "token": "b"}},
        }}})
    vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    assert "<|new|>" in vocab
    size = -(-len(vocab) // 8) * 8
    assert json.loads((out / "config.json").read_text())["vocab_size"] == size
    got = load_file(str(out / "model.safetensors"))
    tokens = {"<|x|>": {"source": "zero"}, "a": {"source": 1, "force": True},
              "<|new|>": {"source": (0, base["vocab"]["b"])}}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        # no base_model: a token both have is averaged (not taken from the base)
        r0, r1 = _reference_rows(vocab, [base, ft], None, tokens, name, size)
        assert got[name].shape == (size, DIM)
        np.testing.assert_array_equal(got[name], _linear(r0, r1), err_msg=name)
    assert not list(tmp_path.glob(".out.ladle-tokens-*"))  # the scratch files are gone


def test_tokenizer_source_model_takes_its_vocabulary(two_models):
    tmp_path, base, ft = two_models
    out = _run(tmp_path, {"merge_method": "task_arithmetic",
                          "base_model": str(tmp_path / "base"),
                          "models": [{"model": str(tmp_path / "ft"),
                                      "parameters": {"weight": 0.5}}],
                          "tokenizer_source": f"model:{tmp_path / 'ft'}"})
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == ft["vocab"]
    got = load_file(str(out / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        r_base, r_ft = _reference_rows(ft["vocab"], [base, ft], 0, {}, name, len(ft["vocab"]))
        ref = (r_base + F32(1.0) * (F32(0.5) * (r_ft - r_base))).astype(F32)
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=2e-7, err_msg=name)
        # rows of tokens only the fine-tune has: its own row, unchanged
        for t in ("d", "<|x|>"):
            np.testing.assert_array_equal(got[name][ft["vocab"][t]],
                                          ft["tensors"][name][ft["vocab"][t]])


def test_tokenizer_errors_are_clear(two_models, capsys):
    tmp_path, _, _ = two_models
    for block, message in [
        ({"source": "union", "tokens": {"q": {"source": {"kind": "model_token",
                                                         "model": str(tmp_path / "base"),
                                                         "token": "zzz"}}}},
         "'zzz' is not in"),
        ({"source": "union", "tokens": {"q": {"source": {"kind": "nope"}}}},
         "expected {kind: zero}"),
        ({"source": "union", "pad_to_multiple_of": 0}, "pad_to_multiple_of"),
        ({"source": "union", "colour": 1}, "unknown key.*colour"),
    ]:
        cfg = tmp_path / "bad.yml"
        cfg.write_text(yaml.safe_dump({
            "merge_method": "linear", "tokenizer": block,
            "models": [{"model": str(tmp_path / "base"), "parameters": {"weight": 1.0}},
                       {"model": str(tmp_path / "ft"), "parameters": {"weight": 1.0}}]}))
        capsys.readouterr()
        rc = main(["merge", "--config", str(cfg), "-o", str(tmp_path / "bad"), "--quiet"])
        err = capsys.readouterr().err
        import re

        assert rc == 2 and err.startswith("ladle: error:") and re.search(message, err), err
        assert not (tmp_path / "bad").exists()
        assert not list(tmp_path.glob(".bad.ladle-tokens-*"))


def test_union_with_slices_uses_each_slice_sources(two_models):
    """passthrough slices: the embedding comes from the first slice's model (A = base),
    lm_head from the last's (ft); rows a model lacks follow the rules among those
    contributors and the base (mergekit's PermutedEmbeddings over a slice)."""
    tmp_path, base, ft = two_models
    out = _run(tmp_path, {"merge_method": "passthrough", "tokenizer_source": "union",
                          "base_model": str(tmp_path / "base"),
                          "slices": [{"sources": [{"model": str(tmp_path / "base"),
                                                   "layer_range": [0, 1]}]},
                                     {"sources": [{"model": str(tmp_path / "ft"),
                                                   "layer_range": [0, 1]}]}]})
    vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    got = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["num_hidden_layers"] == 2
    embed = "model.embed_tokens.weight"
    (r_base,) = _reference_rows(vocab, [base], 0, {}, embed, len(vocab))
    np.testing.assert_array_equal(got[embed], r_base)
    r_base, r_ft = _reference_rows(vocab, [base, ft], 0, {}, "lm_head.weight", len(vocab))
    np.testing.assert_array_equal(got["lm_head.weight"], r_ft)
    assert "model.layers.1.mlp.weight" in got


def test_chat_template_auto_takes_the_most_common(two_models):
    tmp_path, _, _ = two_models
    common, rare = "{{ messages[0]['content'] }} common template", "{{ 'x' }} rare template"
    (tmp_path / "base" / "chat_template.jinja").write_text(common)
    (tmp_path / "ft" / "chat_template.jinja").write_text(common)
    third = tmp_path / "third"
    shutil.copytree(tmp_path / "ft", third)
    (third / "chat_template.jinja").write_text(rare)
    out = _run(tmp_path, {"merge_method": "linear", "tokenizer_source": "base",
                          "chat_template": "auto",
                          "models": [{"model": str(p), "parameters": {"weight": 1.0}}
                                     for p in (third, tmp_path / "base", tmp_path / "ft")]})
    assert (out / "chat_template.jinja").read_text() == common
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == common


def test_union_vocabulary_with_a_lora_reference(two_models):
    """A LoRA reference takes part in a tokenizer recipe: its tokenizer and config are
    the model's, its embeddings are permuted from the adapter-merged view."""
    torch = pytest.importorskip("torch")
    tmp_path, base, ft = two_models
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, DIM)).astype(F32)
    b = rng.standard_normal((DIM, 2)).astype(F32)
    prefix = "base_model.model.model.layers.0.mlp"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b},
              str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["mlp"]}))
    out = _run(tmp_path, {"merge_method": "linear", "base_model": str(tmp_path / "base"),
                          "models": [{"model": str(tmp_path / "base"),
                                      "parameters": {"weight": 1.0}},
                                     {"model": f"{tmp_path / 'ft'}+{adapter}",
                                      "parameters": {"weight": 1.0}}],
                          "tokenizer_source": "union"})
    vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    assert set(vocab) == set(base["vocab"]) | set(ft["vocab"])
    got = load_file(str(out / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        r0, r1 = _reference_rows(vocab, [base, ft], 0, {}, name, len(vocab))
        np.testing.assert_array_equal(got[name], _linear(r0, r1), err_msg=name)
    w = "model.layers.0.mlp.weight"
    tuned = (torch.from_numpy(ft["tensors"][w]) + 2.0 * (torch.from_numpy(b) @ torch.from_numpy(a))
             ).numpy()
    np.testing.assert_array_equal(got[w], _linear(base["tensors"][w], tuned))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
