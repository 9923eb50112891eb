"""LoRA references in recipes (``model: base+adapter``, issue 18): the adapter is
merged into its model a block of rows at a time into a scratch file, the model is
used through a view, and the result equals peft's merge_and_unload; bad adapters
are refused by name and nothing is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ladle.cli.cli import main
from ladle.errors import LadleValueError
from ladle.methods.lora_apply import lora_ref_path, lora_view

from st_io import read_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _llama(seed: int):
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=30, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def _adapter(tmp_path: Path, name: str, **lora) -> Path:
    """A PEFT adapter with random (non-zero) A and B on a fresh copy of the base."""
    model = _llama(0)
    config = peft.LoraConfig(init_lora_weights=False, **lora)
    torch.manual_seed(7)
    wrapped = peft.get_peft_model(model, config)
    wrapped.save_pretrained(tmp_path / name)
    return tmp_path / name


@pytest.fixture
def base(tmp_path) -> Path:
    _llama(0).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _expected(base: Path, adapter: Path) -> dict:
    model = transformers.LlamaForCausalLM.from_pretrained(base)
    return peft.PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def _values(raw):
    return torch.frombuffer(bytearray(raw[2]), dtype=torch.float32).reshape(raw[1])


@pytest.mark.parametrize("lora", [
    {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["o_proj", "embed_tokens"],
     "rank_pattern": {"o_proj": 2}, "alpha_pattern": {"o_proj": 3}},
    {"r": 2, "lora_alpha": 2, "target_modules": ["k_proj"], "modules_to_save": ["lm_head"]},
])
def test_recipe_with_a_lora_reference_equals_peft(tmp_path, base, lora):
    adapter = _adapter(tmp_path, "adapter", **lora)
    recipe = {"merge_method": "linear",
              "models": [{"model": f"{base}+{adapter}", "parameters": {"weight": 1.0}}]}
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
    got = read_checkpoint(out)
    expected = _expected(base, adapter)
    original = read_checkpoint(base)
    changed = 0
    for name, t in expected.items():
        torch.testing.assert_close(_values(got[name]), t, rtol=2e-6, atol=1e-7)
        changed += got[name][2] != original[name][2]
    assert changed >= 2  # the adapter changed the targeted weights
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "out", "r.yml"]


def test_untargeted_tensors_are_read_from_the_model_in_place(tmp_path, base):
    adapter = _adapter(tmp_path, "adapter", r=2, lora_alpha=4, target_modules=["q_proj"])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    view = lora_view(lora_ref_path(base, adapter), scratch, 0)
    rewritten = {n for n, t in view.tensors.items() if t.file.parent == scratch}
    assert rewritten == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)}
    assert len(list(scratch.iterdir())) == 1


def test_lora_reference_inside_a_ties_recipe(tmp_path, base):
    adapter = _adapter(tmp_path, "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    other = _llama(3)
    other.save_pretrained(tmp_path / "other")
    merged_dir = tmp_path / "merged-by-peft"
    model = transformers.LlamaForCausalLM.from_pretrained(base)
    peft.PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(merged_dir)
    outs = {}
    for label, ref in (("ref", f"{base}+{adapter}"), ("dir", str(merged_dir))):
        recipe = {"merge_method": "ties", "base_model": str(base),
                  "models": [{"model": ref, "parameters": {"weight": 1.0, "density": 0.5}},
                             {"model": str(tmp_path / "other"),
                              "parameters": {"weight": 0.5, "density": 0.5}}]}
        cfg = tmp_path / f"{label}.yml"
        cfg.write_text(yaml.safe_dump(recipe))
        outs[label] = tmp_path / f"out-{label}"
        assert main(["merge", "--config", str(cfg), "-o", str(outs[label]), "--quiet"]) == 0
    got, want = read_checkpoint(outs["ref"]), read_checkpoint(outs["dir"])
    for name in want:
        torch.testing.assert_close(_values(got[name]), _values(want[name]), rtol=2e-6,
                                   atol=1e-7)


def _run(tmp_path, base, adapter, *extra) -> tuple[int, str]:
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": f"{base}+{adapter}", "parameters": {"weight": 1.0}}]}))
    return main(["merge", "--config", str(cfg), "-o", str(tmp_path / "out"), "--quiet", *extra])


@pytest.mark.parametrize("damage,message", [
    (lambda a: (a / "adapter_config.json").write_text(json.dumps(
        {**json.loads((a / "adapter_config.json").read_text()), "use_dora": True})), "use_dora"),
    (lambda a: (a / "adapter_config.json").unlink(), "not a PEFT adapter"),
    (lambda a: (a / "adapter_config.json").write_text("{"), "not valid JSON"),
])
def test_bad_adapters_are_refused_by_name(tmp_path, base, capsys, damage, message):
    adapter = _adapter(tmp_path, "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    damage(adapter)
    assert _run(tmp_path, base, adapter) == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error:") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "r.yml"]


def test_adapter_for_another_model_and_missing_factor(tmp_path, base, capsys):
    from safetensors.torch import load_file, save_file

    adapter = _adapter(tmp_path, "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    weights = load_file(adapter / "adapter_model.safetensors")
    renamed = {k.replace("layers.1.", "layers.9."): v for k, v in weights.items()}
    save_file(renamed, adapter / "adapter_model.safetensors")
    assert _run(tmp_path, base, adapter) == 2
    assert "does not have" in capsys.readouterr().err
    save_file({k: v for k, v in weights.items() if "lora_B" not in k or "layers.0" not in k},
              adapter / "adapter_model.safetensors")
    assert _run(tmp_path, base, adapter) == 2
    assert "lora_B is missing" in capsys.readouterr().err


def test_resume_and_unknown_parts_are_refused(tmp_path, base, capsys):
    adapter = _adapter(tmp_path, "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    assert _run(tmp_path, base, adapter, "--resume") == 2
    assert "without --resume" in capsys.readouterr().err
    with pytest.raises(LadleValueError, match="both parts local paths"):
        from ladle.methods.recipe import parse_recipe

        parse_recipe({"merge_method": "linear",
                      "models": [{"model": f"{base}+{tmp_path}/nope",
                                  "parameters": {"weight": 1.0}}]})
