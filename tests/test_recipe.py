"""`ladle merge --config recipe.yml`: mergekit's YAML schema, its errors, tokenizer and
chat-template handling, and agreement with mergekit itself where it is available."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ladle.cli.cli import main
from ladle.methods.recipe import parse_recipe

from reference import from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32


def _model_dir(path: Path, rng, base=None, tokenizer: str | None = None) -> Path:
    path.mkdir()
    tensors = {}
    for name, n in [("model.embed_tokens.weight", 96), ("model.layers.0.mlp.weight", 3000),
                    ("model.layers.1.mlp.weight", 3000), ("model.norm.weight", 8)]:
        x = rng.standard_normal(n).astype(F32) if base is None else \
            to_f32(base[name][2], "BF16") + rng.standard_normal(n).astype(F32) * F32(0.01)
        tensors[name] = ("BF16", [n], from_f32(x, "BF16"))
    write_raw(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps({"model_type": "toy", "from": path.name}))
    if tokenizer:
        (path / "tokenizer.json").write_text(json.dumps({"tok": tokenizer}))
        (path / "tokenizer_config.json").write_text(json.dumps({"name": tokenizer}))
    return path


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(0)
    base = _model_dir(tmp_path / "base", rng, tokenizer="base-tok")
    raw = read_checkpoint(base / "model.safetensors")
    a = _model_dir(tmp_path / "a", rng, raw, tokenizer="a-tok")
    b = _model_dir(tmp_path / "b", rng, raw)
    return base, a, b


def _run(tmp_path, recipe: dict, name="out") -> tuple[int, Path]:
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    return main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]), out


def test_ties_recipe_runs_and_matches_api(tmp_path, models):
    base, a, b = models
    recipe = {"merge_method": "ties", "base_model": str(base), "dtype": "bfloat16",
              "models": [{"model": str(base)},
                         {"model": str(a), "parameters": {"weight": 1.0, "density": [1, 0.3]}},
                         {"model": str(b), "parameters": {
                             "weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}],
                             "density": 0.5}}],
              "parameters": {"normalize": True, "int8_mask": True},
              "tokenizer_source": str(a), "chat_template": "chatml"}
    rc, out = _run(tmp_path, recipe)
    assert rc == 0
    from ladle.methods import methods

    api = tmp_path / "api.safetensors"
    methods.merge_models("ties", [a, b], api, base_model=base, progress=False,
                         parameters={"normalize": True},
                         model_parameters=[{"weight": 1.0, "density": [1, 0.3]},
                                           {"weight": [{"filter": "mlp", "value": 0.5},
                                                       {"value": 1.0}], "density": 0.5}])
    assert read_checkpoint(out) == read_checkpoint(api)
    assert json.loads((out / "tokenizer.json").read_text()) == {"tok": "a-tok"}
    assert json.loads((out / "config.json").read_text())["from"] == "base"
    assert "im_start" in (out / "chat_template.jinja").read_text()
    assert "im_start" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("recipe_patch,message", [
    ({"slices": [{"sources": []}]}, "exactly one of 'models', 'slices'"),
    ({"merge_method": "ram"}, "'ram' is not implemented"),
    ({"merge_method": "tiess"}, "unknown merge_method 'tiess'"),
    ({"base_modle": "x"}, "unknown key.*'base_modle'"),
    ({"parameters": {"normalise": True}}, "unknown parameter 'normalise'"),
    ({"tokenizer_source": "union"}, "base: cannot load its tokenizer"),
    ({"tokenizer": {"source": "base"}}, "base: cannot load its tokenizer"),
    ({"tokenizer": {"source": "base"}, "tokenizer_source": "base"}, "not both"),
    ({"chat_template": "auto"}, "none of the models has a chat template"),
    ({"chat_template": "vicuna"}, "neither Jinja text nor a built-in name"),
    ({"dtype": "int8"}, "unsupported dtype"),
    ({"seed": -1}, "seed"),
])
def test_recipe_errors_name_the_problem(tmp_path, models, recipe_patch, message, capsys):
    base, a, _ = models
    recipe = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(a), "parameters": {"weight": 1.0}}]}
    recipe.update(recipe_patch)
    rc, _ = _run(tmp_path, recipe)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error:")
    import re

    assert re.search(message, err), err


def test_recipe_model_level_errors(tmp_path, models):
    base, a, _ = models
    from ladle.errors import LadleValueError

    with pytest.raises(LadleValueError, match=r"models\[0\]: unknown key\(s\) 'paramters'"):
        parse_recipe({"merge_method": "ties", "base_model": str(base),
                      "models": [{"model": str(a), "paramters": {"weight": 1}}]})
    with pytest.raises(LadleValueError, match="unknown parameter 'weigth'"):
        parse_recipe({"merge_method": "ties", "base_model": str(base),
                      "models": [{"model": str(a), "parameters": {"weigth": 1}}]})
    with pytest.raises(LadleValueError, match="not found locally"):
        parse_recipe({"merge_method": "ties", "base_model": "org/missing-model",
                      "models": [{"model": str(a)}]})
    with pytest.raises(LadleValueError, match="LoRA"):
        parse_recipe({"merge_method": "ties", "base_model": str(base),
                      "models": [{"model": "org/model+org/lora"}]})
    with pytest.raises(LadleValueError, match="'filter' and 'value'"):
        parse_recipe({"merge_method": "ties", "base_model": str(base),
                      "models": [{"model": str(a), "parameters": {
                          "weight": [{"filtr": "mlp", "value": 1}]}}]})


def test_slerp_recipe_with_gradient(tmp_path, models):
    base, a, _ = models
    rc, out = _run(tmp_path, {"merge_method": "slerp", "base_model": str(base),
                              "models": [{"model": str(base)}, {"model": str(a)}],
                              "parameters": {"t": [{"filter": "mlp", "value": [0, 1]},
                                                  {"value": 0.5}]}})
    assert rc == 0
    got = read_checkpoint(out)
    src = read_checkpoint(base / "model.safetensors")
    other = read_checkpoint(a / "model.safetensors")
    assert got["model.layers.0.mlp.weight"] == src["model.layers.0.mlp.weight"]  # t = 0
    assert got["model.layers.1.mlp.weight"] == other["model.layers.1.mlp.weight"]  # t = 1


def test_recipe_resumes_and_refuses_resume_with_a_tokenizer(tmp_path, models, capsys):
    base, a, b = models
    recipe = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": 0.5}},
                         {"model": str(b), "parameters": {"weight": 0.5, "density": 0.5}}]}
    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    assert main(["merge", "--config", str(cfg), "-o", str(fresh), "--quiet"]) == 0
    # --resume with nothing to resume is a plain run (main refused --resume here)
    assert main(["merge", "--config", str(cfg), "-o", str(resumed), "--quiet", "--resume"]) == 0
    assert read_checkpoint(resumed) == read_checkpoint(fresh)

    cfg.write_text(yaml.safe_dump({**recipe, "tokenizer_source": "base"}))
    out = tmp_path / "tok"
    assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error:") and err.count("\n") == 1
    assert "without --resume or --distributed" in err and not out.exists()
