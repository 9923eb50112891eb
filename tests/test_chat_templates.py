"""The named chat templates (ladle.methods.chat_templates): each renders conversations exactly
as mergekit's template of that name does under transformers' chat-template
environment (expected prompts written out here), and a recipe's
``chat_template: NAME`` writes that template into the output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ladle.cli.cli import main
from ladle.methods.chat_templates import BUILTIN_TEMPLATES

from st_io import write_raw

TALK = [{"role": "system", "content": " Be nice. "}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "More"}]
EXPECTED = {
    "chatml": "<|im_start|>system\n Be nice. <|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\nMore<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\nMore<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST]  Be nice. \n\nHi [/INST]  Hello! </s> [INST] More [/INST]",
    "alpaca": "Be nice.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
              "### Instruction:\nMore### Response:\n",
    "exaone": "    [|system|] Be nice. \n        [|endofturn|]\n\n    [|user|]Hi\n        \n\n"
              "    [|assistant|] Hello! \n        [|endofturn|]\n\n    [|user|]More\n        \n\n"
              "    [|assistant|]\n",
}


def _render(template: str, messages: list[dict], trim: bool = True) -> str:
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_as_mergekit(name):
    assert set(BUILTIN_TEMPLATES) == set(EXPECTED)
    for trim in (True, False):  # whitespace-controlled: the environment's options don't matter
        assert _render(BUILTIN_TEMPLATES[name], TALK, trim) == EXPECTED[name]


def test_template_edge_cases():
    jinja2 = pytest.importorskip("jinja2")
    # alpaca: no system message -> empty head; a trailing system message still
    # leaves the blank line after the last turn; the other roles print nothing.
    talk = [{"role": "user_context", "content": " ctx "}, {"role": "user", "content": "q"},
            {"role": "tool", "content": "t"}, {"role": "system", "content": "S"}]
    assert _render(BUILTIN_TEMPLATES["alpaca"], talk) == \
        "S\n\n### Input:\nctx\n\n### Instruction:\nq\n\n### Response:\n"
    # exaone: a conversation without a system message gets an empty one.
    assert _render(BUILTIN_TEMPLATES["exaone"], [{"role": "user", "content": "u"}]) == \
        "        [|system|][|endofturn|]\n\n    [|user|]u\n        \n\n    [|assistant|]\n"
    # mistral: turns must alternate.
    with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate"):
        _render(BUILTIN_TEMPLATES["mistral"], [{"role": "assistant", "content": "a"}])


def test_recipe_names_a_template(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    write_raw(model / "model.safetensors", {"w": ("F32", [4], np.ones(4, np.float32).tobytes())})
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8}))
    for name in ("llama3", "alpaca"):
        cfg = tmp_path / f"{name}.yml"
        cfg.write_text(yaml.safe_dump({"merge_method": "linear", "chat_template": name,
                                       "models": [{"model": str(model),
                                                   "parameters": {"weight": 1.0}}]}))
        out = tmp_path / f"out-{name}"
        assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
        assert (out / "chat_template.jinja").read_text() == BUILTIN_TEMPLATES[name]
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["chat_template"] == BUILTIN_TEMPLATES[name]
