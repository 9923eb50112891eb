"""mergekit's ``slices:``/``modules:`` recipes and ``passthrough``: layer ranges of
several models stacked (upscaling), layer indices renumbered, config rewritten, and
slices merged across sources checked against a plain-torch reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ladle.cli.cli import main
from ladle.errors import LadleValueError
from ladle.methods.recipe import load_recipe, run_recipe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYERS = 4


def _tiny_llama(path: Path, seed: int, **extra) -> dict:
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=N_LAYERS, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=40,
                                      tie_word_embeddings=False, **extra)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _recipe(tmp_path: Path, recipe: dict, name: str = "out", *extra: str) -> tuple[int, Path]:
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    return main(["merge", "--config", str(cfg), "-o", str(out), "--quiet", *extra]), out


def _renamed(name: str, offset: int) -> str:
    return re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) + offset}.", name)


def _bits(t):
    return t.contiguous().view(torch.int16)


def test_upscaled_llama_loads_with_source_layers_bit_for_bit(tmp_path):
    """4 + 4 layers -> 6: [0, 3) of A then [1, 4) of B; embeddings from A (first
    slice), final norm and lm_head from B (last slice), as in mergekit."""
    a = _tiny_llama(tmp_path / "a", 0)
    b = _tiny_llama(tmp_path / "b", 1)
    recipe = {"merge_method": "passthrough", "dtype": "bfloat16",
              "slices": [{"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 3]}]},
                         {"sources": [{"model": str(tmp_path / "b"), "layer_range": [1, 4]}]}]}
    rc, out = _recipe(tmp_path, recipe)
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    merged = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert merged.config.num_hidden_layers == 6 and len(merged.model.layers) == 6
    got = merged.state_dict()
    expected = {}
    for name, t in a.items():
        m = re.search(r"layers\.(\d+)\.", name)
        if m is None and "embed" in name or m and int(m.group(1)) < 3:
            expected[name] = t
    for name, t in b.items():
        m = re.search(r"layers\.(\d+)\.", name)
        if m is None and "embed" not in name:
            expected[name] = t
        elif m and int(m.group(1)) >= 1:
            expected[_renamed(name, 2)] = t  # B's layer 1 becomes output layer 3
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        assert torch.equal(_bits(got[name]), _bits(t)), name
    assert merged(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 40)


def test_layer_types_follow_their_source_layers(tmp_path):
    types_a = ["sliding_attention", "full_attention"] * 2
    _tiny_llama(tmp_path / "a", 0)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["layer_types"] = types_a
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    recipe = {"merge_method": "passthrough",
              "slices": [{"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 2]}]},
                         {"sources": [{"model": str(tmp_path / "a"), "layer_range": [1, 4]}]}]}
    rc, out = _recipe(tmp_path, recipe)
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    assert config["layer_types"] == [types_a[i] for i in (0, 1, 1, 2, 3)]


def test_slice_merged_across_sources_matches_torch(tmp_path):
    """A slice with two sources, linear with a weight gradient over the slice's own
    layers (t = j / (n − 1) within the slice) and per-source parameters; an
    unmerged slice; passthrough ``scale``."""
    a = _tiny_llama(tmp_path / "a", 0)
    b = _tiny_llama(tmp_path / "b", 1)
    recipe = {"merge_method": "linear", "parameters": {"normalize": False},
              "slices": [
                  {"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 2],
                                "parameters": {"weight": [1.0, 0.0]}},
                               {"model": str(tmp_path / "b"), "layer_range": [2, 4],
                                "parameters": {"weight": [0.0, 1.0]}}]},
                  {"sources": [{"model": str(tmp_path / "a"), "layer_range": [1, 3],
                                "parameters": {"weight": 0.5}},
                               {"model": str(tmp_path / "b"), "layer_range": [1, 3]}],
                   "parameters": {"weight": [{"filter": "mlp", "value": 0.25},
                                             {"value": 2.0}]}}]}
    rc, out = _recipe(tmp_path, recipe)
    assert rc == 0
    from safetensors.torch import load_file

    got = load_file(out / "model.safetensors")

    def lin(wa, ta, wb, tb):
        acc = torch.tensor(wa, dtype=torch.float32) * ta.float()
        acc = acc + torch.tensor(wb, dtype=torch.float32) * tb.float()
        return acc.to(torch.bfloat16)

    for name in a:
        m = re.search(r"layers\.(\d+)\.", name)
        if m is None:  # pre/post weights: merged from the first/last slice's sources
            w = (1.0, 0.0) if "embed" in name else (0.5, 2.0)
            if "embed" not in name and "mlp" in name:
                w = (0.5, 0.25)
            ref = lin(w[0], a[name], w[1], b[name])
            assert torch.equal(_bits(got[name]), _bits(ref)), name
            continue
        i = int(m.group(1))
        # output layers 0..1: a[i] and b[i + 2], weights from the gradient at t = i
        if i < 2:
            ref = lin(1.0 - i, a[name], float(i), b[_renamed(name, 2)])
            assert torch.equal(_bits(got[name]), _bits(ref)), name
        # output layers 2..3: a[i - 1] and b[i - 1]; b's weight from the slice filter
        if i < 2:
            out_name = _renamed(name, 2)
            src = _renamed(name, 1)
            wb = 0.25 if "mlp" in name else 2.0
            ref = lin(0.5, a[src], wb, b[src])
            assert torch.equal(_bits(got[out_name]), _bits(ref)), out_name
    assert len(got) == len(a)


def test_passthrough_scale_and_models_form(tmp_path):
    a = _tiny_llama(tmp_path / "a", 0)
    recipe = {"merge_method": "passthrough",
              "models": [{"model": str(tmp_path / "a"),
                          "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                   {"value": 1.0}]}}]}
    rc, out = _recipe(tmp_path, recipe)
    assert rc == 0
    from safetensors.torch import load_file

    got = load_file(out / "model.safetensors")
    for name, t in a.items():
        ref = (t.float() * torch.tensor(0.5)).to(torch.bfloat16) if "o_proj" in name else t
        assert torch.equal(_bits(got[name]), _bits(ref)), name


def test_modules_form_names_the_layer_prefix(tmp_path):
    a = _tiny_llama(tmp_path / "a", 0)
    for key in ("default", "model.layers"):
        recipe = {"merge_method": "passthrough",
                  "modules": {key: {"slices": [
                      {"sources": [{"model": str(tmp_path / "a"), "layer_range": [2, 4]}]}]}}}
        rc, out = _recipe(tmp_path, recipe, name=key.replace(".", "_"))
        assert rc == 0
        config = json.loads((out / "config.json").read_text())
        assert config["num_hidden_layers"] == 2
        merged = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
        got = merged.state_dict()
        for name, t in got.items():
            src = _renamed(name, 2) if "layers." in name else name
            assert torch.equal(_bits(t), _bits(a[src])), name


@pytest.mark.parametrize("patch,message", [
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 5]}]}]},
     r"layer_range \[0, 5\) of .* outside its 4 layers"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 2]},
                              {"model": "A", "layer_range": [0, 3]}]}]},
     "same number of layers"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 2]},
                              {"model": "A", "layer_range": [1, 3]}]}]},
     "exactly 1 model"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": "0-2"}]}]}, "layer_range"),
    ({"slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}], "residual": 1}]},
     "unknown key.*'residual'"),
    ({"modules": {"vision": {"slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]}]}}},
     "'vision' is not a module"),
    ({"models": [{"model": "A"}], "slices": []}, "exactly one of 'models', 'slices'"),
    ({"merge_method": "ties", "base_model": "A",
      "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]}]}, "at least 1 model"),
    ({"merge_method": "ties", "base_model": "A",
      "slices": [{"sources": [{"model": "B", "layer_range": [0, 2]}]}]},
     "needs the base model among each slice's sources"),
])
def test_slice_errors_are_clear(tmp_path, capsys, patch, message):
    _tiny_llama(tmp_path / "A", 0)
    _tiny_llama(tmp_path / "B", 1)
    recipe = {"merge_method": "passthrough", **patch}
    text = yaml.safe_dump(recipe).replace(" A\n", f" {tmp_path / 'A'}\n").replace(
        " B\n", f" {tmp_path / 'B'}\n")
    cfg = tmp_path / "r.yml"
    cfg.write_text(text)
    capsys.readouterr()  # transformers' own progress output while saving
    rc = main(["merge", "--config", str(cfg), "-o", str(tmp_path / "out"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error:") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_slices_dry_run_and_api(tmp_path, capsys):
    _tiny_llama(tmp_path / "a", 0)
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 4]}]},
        {"sources": [{"model": str(tmp_path / "a"), "layer_range": [3, 4]}]}]}))
    report = run_recipe(load_recipe(cfg), tmp_path / "out", dry_run=True, progress=False)
    assert report.out is None and not (tmp_path / "out").exists()
    assert "model.layers.4.mlp.down_proj.weight" in capsys.readouterr().out
    with pytest.raises(LadleValueError, match="destination exists"):
        (tmp_path / "out").mkdir()
        run_recipe(load_recipe(cfg), tmp_path / "out", progress=False)


def test_residual_weight_is_accepted_with_a_warning(tmp_path, capsys):
    _tiny_llama(tmp_path / "a", 0)
    recipe = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 4]}],
         "residual_weight": 0.5}]}
    capsys.readouterr()
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    assert main(["merge", "--config", str(cfg), "-o", str(tmp_path / "out")]) == 0
    assert "ladle: warning:" in capsys.readouterr().err


def test_slices_include_exclude(tmp_path):
    a = _tiny_llama(tmp_path / "a", 0)
    recipe = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tmp_path / "a"), "layer_range": [1, 3]}]}]}
    rc, out = _recipe(tmp_path, recipe, "out", "--exclude", "*lm_head*", "--exclude", "*mlp*")
    assert rc == 0
    from safetensors.torch import load_file

    got = load_file(out / "model.safetensors")
    assert not any("lm_head" in n or "mlp" in n for n in got)
    assert torch.equal(_bits(got["model.layers.0.self_attn.q_proj.weight"]),
                       _bits(a["model.layers.1.self_attn.q_proj.weight"]))
    rc, _ = _recipe(tmp_path, recipe, "none", "--include", "nothing*")
    assert rc == 2


def test_modules_models_form_equals_the_models_recipe(tmp_path):
    _tiny_llama(tmp_path / "a", 0)
    _tiny_llama(tmp_path / "b", 1)
    models = [{"model": str(tmp_path / "a"), "parameters": {"weight": [1.0, 0.25]}},
              {"model": str(tmp_path / "b"), "parameters": {"weight": 0.5}}]
    rc1, out1 = _recipe(tmp_path, {"merge_method": "linear", "models": models}, "plain")
    rc2, out2 = _recipe(tmp_path, {"merge_method": "linear",
                                   "modules": {"default": {"models": models}}}, "modules")
    assert rc1 == rc2 == 0
    from safetensors.torch import load_file

    x, y = load_file(out1 / "model.safetensors"), load_file(out2 / "model.safetensors")
    assert sorted(x) == sorted(y)
    for name in x:
        assert torch.equal(_bits(x[name]), _bits(y[name])), name
