"""mergekit-style YAML recipes for ``ladle merge --config recipe.yml``.

Accepted keys (mergekit's schema for the methods ladle implements)::

    merge_method: ties            # linear, task_arithmetic, ties, dare_ties, dare_linear,
                                  # breadcrumbs, breadcrumbs_ties, slerp, model_stock
    base_model: path/to/base
    models:
      - model: path/to/ft1
        parameters: {weight: 1.0, density: [1, 0.7, 0.1]}   # gradient across layers
      - model: path/to/ft2
        parameters:
          weight: [{filter: self_attn, value: 0.3}, {value: 0.7}]  # by tensor name
    parameters: {normalize: true, lambda: 1.0, int8_mask: true}
    dtype: bfloat16               # mergekit's compute dtype; ladle computes in fp32 and
    out_dtype: bfloat16           # writes out_dtype, else dtype, else the base's dtype
    tokenizer_source: base        # or a model path: copy its tokenizer files
    chat_template: chatml         # or Jinja text
    seed: 0                       # ladle extension: DARE's RNG seed

Models are local paths (ladle downloads nothing). Features ladle does not implement
(``slices``, ``modules``, ``tokenizer:``, ``tokenizer_source: union``, LoRA ``+``
references, other methods) are refused by name; unknown keys are errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LadleIOError, LadleValueError
from .methods import check_method_name, check_parameter_names

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "chat_template", "seed"}
REFUSED_KEYS = {
    "slices": "'slices' (layer stacking / passthrough) is not implemented by ladle",
    "modules": "'modules' (per-module slices) is not implemented by ladle",
    "tokenizer": "'tokenizer' (vocabulary merging) is not implemented by ladle; "
                 "use tokenizer_source: base or a model path",
}
MODEL_KEYS = {"model", "parameters"}
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "added_tokens.json", "merges.txt", "vocab.json",
                   "vocab.txt", "chat_template.jinja", "chat_template.json")
_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "float64": "f64",
           "bf16": "bf16", "fp16": "f16", "f16": "f16", "fp32": "f32", "f32": "f32",
           "half": "f16", "float": "f32"}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
BUILTIN_TEMPLATES = {"chatml": CHATML}


@dataclass
class Recipe:
    """A parsed recipe: what :func:`ladle.methods.merge_models` needs."""

    path: Path | None
    method: str
    base_model: Path | None
    models: list[Path]
    model_parameters: list[dict[str, Any]]
    parameters: dict[str, Any]
    dtype: str | None
    tokenizer_source: Path | None
    chat_template: str | None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe file (relative model paths resolve against the
    current directory first, then the recipe's directory).

    The file must be a regular file of at most :data:`MAX_RECIPE_BYTES`, and its
    YAML at most :data:`MAX_RECIPE_NODES` nodes once aliases are expanded, so an
    alias bomb ("billion laughs") is refused while it is parsed, not walked.
    """
    import yaml

    from .path_safety import read_regular_file

    path = Path(path)
    try:
        text = read_regular_file(path, MAX_RECIPE_BYTES).decode()
    except UnicodeDecodeError as e:
        raise LadleValueError(f"{path}: not UTF-8 text: {e}") from None
    except FileNotFoundError:
        raise LadleIOError(2, f"{path}: no such recipe file") from None
    try:
        data = yaml.load(text, Loader=_bounded_loader())
    except yaml.YAMLError as e:
        raise LadleValueError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise LadleValueError(f"{path}: YAML nested too deeply") from None
    return parse_recipe(data, path)


MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_NODES = 100_000


def _bounded_loader() -> type:
    """yaml.SafeLoader that counts nodes as if every alias were expanded and
    stops at MAX_RECIPE_NODES (PyYAML shares aliased nodes, but everything that
    walks the result, the recipe checks and the JSON metadata, expands them)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def compose_document(self):
            self._expanded: dict[int, int] = {}
            return super().compose_document()

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                target = self.anchors.get(self.peek_event().anchor)
                if target is not None and id(target) not in self._expanded:
                    raise yaml.YAMLError("an alias refers to a node that contains it")
            node = super().compose_node(parent, index)
            size = self._expanded.get(id(node))
            if size is None:
                children = (node.value if isinstance(node, yaml.SequenceNode) else
                            [n for pair in node.value for n in pair]
                            if isinstance(node, yaml.MappingNode) else [])
                size = 1 + sum(self._expanded[id(c)] for c in children)
                self._expanded[id(node)] = size
            if size > MAX_RECIPE_NODES:
                raise yaml.YAMLError(f"more than {MAX_RECIPE_NODES} nodes once aliases are "
                                     f"expanded (an alias bomb?); refused")
            return node

    return BoundedLoader


def parse_recipe(data: Any, path: Path | None = None) -> Recipe:
    """Validate a recipe given as a dict (see the module doc for the schema)."""
    where = f"{path}: " if path else "recipe: "
    if not isinstance(data, dict):
        raise LadleValueError(f"{where}expected a mapping at the top level")
    for key in data:
        if key in REFUSED_KEYS:
            raise LadleValueError(where + REFUSED_KEYS[key])
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise LadleValueError(f"{where}unknown key(s) {', '.join(map(repr, unknown))} "
                              f"(allowed: {', '.join(sorted(TOP_KEYS))})")
    method = data.get("merge_method")
    if not isinstance(method, str):
        raise LadleValueError(f"{where}'merge_method' is required")
    check_method_name(method, where, "merge_method")
    models_in = data.get("models")
    if not isinstance(models_in, list) or not models_in:
        raise LadleValueError(f"{where}'models' must be a non-empty list")
    base = _model_path(data["base_model"], where, "base_model", path) \
        if data.get("base_model") is not None else None
    models, model_params = [], []
    for i, entry in enumerate(models_in):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise LadleValueError(f"{where}models[{i}]: expected a mapping with 'model'")
        bad = sorted(set(entry) - MODEL_KEYS)
        if bad:
            raise LadleValueError(f"{where}models[{i}]: unknown key(s) "
                                  f"{', '.join(map(repr, bad))} (allowed: model, parameters)")
        model = _model_path(entry["model"], where, f"models[{i}].model", path)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise LadleValueError(f"{where}models[{i}].parameters must be a mapping")
        if base is not None and model.resolve() == base.resolve() and method != "linear":
            continue  # the base listed among the models (its parameters are unused)
        for key, value in params.items():
            _check_setting(value, f"{where}models[{i}].parameters.{key}")
        models.append(model)
        model_params.append(params)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise LadleValueError(f"{where}'parameters' must be a mapping")
    for key, value in parameters.items():
        _check_setting(value, f"{where}parameters.{key}")
    check_parameter_names(method, parameters, model_params, where)
    dtype = None
    for key in ("out_dtype", "dtype"):
        value = data.get(key)
        if value is not None:
            name = str(value).removeprefix("torch.").lower()
            if name not in _DTYPES:
                raise LadleValueError(f"{where}{key}: unsupported dtype {value!r} "
                                      f"(bfloat16, float16, float32, float64)")
            dtype = dtype or _DTYPES[name]
    tokenizer_source = None
    ts = data.get("tokenizer_source")
    if ts is not None:
        if ts == "union":
            raise LadleValueError(f"{where}tokenizer_source: union (vocabulary merging) is not "
                                  f"implemented by ladle; use base or a model path")
        if ts == "base":
            if base is None:
                raise LadleValueError(f"{where}tokenizer_source: base needs base_model")
            tokenizer_source = base
        else:
            tokenizer_source = _model_path(ts, where, "tokenizer_source", path)
    template = data.get("chat_template")
    if template is not None:
        template = _chat_template(str(template), where)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LadleValueError(f"{where}seed must be a non-negative integer, got {seed!r}")
    return Recipe(path, method, base, models, model_params, parameters, dtype,
                  tokenizer_source, template, seed)


def _check_setting(value: Any, where: str) -> None:
    """Scalars, lists of scalars (gradients) and {filter, value} conditions only."""
    if isinstance(value, (bool, int, float, str)):
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict):
            bad = sorted(set(item) - {"filter", "value"})
            if bad or "value" not in item:
                raise LadleValueError(f"{where}: a condition takes 'filter' and 'value'"
                                      + (f", got key(s) {', '.join(map(repr, bad))}"
                                         if bad else ", 'value' is missing"))
            _check_setting(item["value"], where)
        elif not isinstance(item, (bool, int, float, str)):
            raise LadleValueError(f"{where}: unexpected value {item!r}")


def _model_path(ref: Any, where: str, key: str, recipe_path: Path | None) -> Path:
    if not isinstance(ref, str) or not ref:
        raise LadleValueError(f"{where}{key}: expected a model path, got {ref!r}")
    if "+" in ref and not Path(ref).exists():
        raise LadleValueError(f"{where}{key}: LoRA references ('{ref}') are not implemented "
                              f"by ladle")
    candidates = [Path(ref)]
    if recipe_path is not None and not Path(ref).is_absolute():
        candidates.append(recipe_path.parent / ref)
    for c in candidates:
        if c.exists():
            return c
    raise LadleValueError(f"{where}{key}: model '{ref}' not found locally (ladle reads local "
                          f"checkpoints only; it does not download)")


def _chat_template(value: str, where: str) -> str:
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if len(value) >= 20 and "{" in value:
        return value
    raise LadleValueError(f"{where}chat_template: '{value}' is neither Jinja text nor a "
                          f"built-in name ({', '.join(BUILTIN_TEMPLATES)}); 'auto' and other "
                          f"mergekit template names are not implemented by ladle")


def extra_files(recipe: Recipe) -> list[Path]:
    """Non-weight files for the output: those of the base (or first model), with the
    tokenizer files taken from ``tokenizer_source`` instead when it is set."""
    from .checkpoint import open_checkpoint

    donor = open_checkpoint(recipe.base_model or recipe.models[0])
    files = list(donor.extra_files)
    if recipe.tokenizer_source is None:
        return files
    source = recipe.tokenizer_source
    if not source.is_dir():
        raise LadleValueError(f"tokenizer_source {source}: not a model directory")
    files = [f for f in files if f.name not in TOKENIZER_FILES]
    taken = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not taken:
        raise LadleValueError(f"tokenizer_source {source}: no tokenizer files "
                              f"({', '.join(TOKENIZER_FILES[:4])}, ...)")
    return files + taken


def run_recipe(recipe: Recipe, out: str | os.PathLike, **options):
    """Run a parsed recipe; options are those of :func:`ladle.methods.merge_models`."""
    from .methods import merge_models
    from .output import checked_output

    checked_output(out, [recipe.base_model, *recipe.models, recipe.tokenizer_source],
                   overwrite=options.get("overwrite", False))  # before reading any header
    models = list(recipe.models)
    params = list(recipe.model_parameters)
    options.setdefault("dtype", recipe.dtype)
    return merge_models(recipe.method, models, out, base_model=recipe.base_model,
                        parameters=recipe.parameters, model_parameters=params,
                        seed=recipe.seed, extra_files=extra_files(recipe),
                        chat_template=recipe.chat_template, **options)
