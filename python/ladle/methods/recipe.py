"""mergekit-style YAML recipes for ``ladle merge --config recipe.yml``.

Accepted keys (mergekit's schema for the methods ladle implements)::

    merge_method: ties            # linear, task_arithmetic, ties, dare_ties, dare_linear,
                                  # breadcrumbs, breadcrumbs_ties, slerp, model_stock,
                                  # passthrough, nuslerp, nearswap, della, della_linear, sce,
                                  # multislerp, karcher, arcee_fusion
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
    tokenizer_source: base        # union, or a model path (ladle.methods.tokenizer); or a
                                  # tokenizer: {source, tokens, pad_to_multiple_of} block
    chat_template: chatml         # Jinja text, auto, or alpaca|chatml|exaone|llama3|mistral
    seed: 0                       # ladle extension: DARE's RNG seed

Instead of ``models:``, ``slices:`` (layer ranges stacked, each slice with
``sources: [{model, layer_range, parameters}]``) or ``modules:`` (per layer prefix)
describe frankenmerges (:mod:`ladle.methods.slices`). Models are local paths (ladle
downloads nothing); ``model: path/to/model+path/to/adapter`` merges a PEFT LoRA
adapter into the model first (:mod:`ladle.methods.lora_apply`). Methods ladle does not
implement are refused by name; unknown keys are errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LadleIOError, LadleValueError
from .chat_templates import BUILTIN_TEMPLATES
from .lora_apply import is_lora_ref, lora_ref_path, lora_view, open_model, parts, split_lora_ref
from .mapping_keys import refuse_unknown_keys
from .methods import check_method_name, check_parameter_names
from .slices import OutputModule, OutputSlice, SliceSource

if TYPE_CHECKING:  # numpy loads with a tokenizer block, not with every recipe
    from .tokenizer import TokenizerSpec

TOP_KEYS = {"merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype",
            "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "seed"}
REFUSED_KEYS: dict[str, str] = {}
MODEL_KEYS = {"model", "parameters"}
SLICE_KEYS = {"sources", "base_model", "parameters", "residual_weight"}
SOURCE_KEYS = {"model", "layer_range", "parameters"}
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "added_tokens.json", "merges.txt", "vocab.json",
                   "vocab.txt", "chat_template.jinja", "chat_template.json")
_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "float64": "f64",
           "bf16": "bf16", "fp16": "f16", "f16": "f16", "fp32": "f32", "f32": "f32",
           "half": "f16", "float": "f32"}


@dataclass
class Recipe:
    """A parsed recipe: what :func:`ladle.methods.methods.merge_models` needs."""

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
    modules: dict[str, OutputModule] | None = None  # slices:/modules: recipes
    tokenizer: TokenizerSpec | None = None  # tokenizer_source / tokenizer: block

    def referenced_models(self) -> list[Path]:
        """Every model the recipe names, base first, each once."""
        seen = [self.base_model] if self.base_model is not None else []
        seen += self.models
        for module in (self.modules or {}).values():
            seen += [s.model for sl in module.slices or [] for s in sl.sources]
            seen += [sl.base_model for sl in module.slices or [] if sl.base_model]
            seen += [m for m, _ in module.models or []]
        return list(dict.fromkeys(seen))


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe file (relative model paths resolve against the
    current directory first, then the recipe's directory).

    The file must be a regular file of at most :data:`MAX_RECIPE_BYTES`, and its
    YAML at most :data:`MAX_RECIPE_NODES` nodes once aliases are expanded, so an
    alias bomb ("billion laughs") is refused while it is parsed, not walked.
    """
    import yaml

    from ..engine.path_safety import read_regular_file

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
    refuse_unknown_keys(data, sorted(TOP_KEYS), where)
    method = data.get("merge_method")
    if not isinstance(method, str):
        raise LadleValueError(f"{where}'merge_method' is required")
    check_method_name(method, where, "merge_method")
    forms = [k for k in ("models", "slices", "modules") if data.get(k) is not None]
    if len(forms) != 1:
        raise LadleValueError(f"{where}exactly one of 'models', 'slices' or 'modules' is "
                              f"required, got {', '.join(map(repr, forms)) or 'none'}")
    base = _model_path(data["base_model"], where, "base_model", path) \
        if data.get("base_model") is not None else None
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise LadleValueError(f"{where}'parameters' must be a mapping")
    modules = None
    if forms[0] == "slices":
        modules = {"default": _module({"slices": data["slices"]}, f"{where}slices", path)}
    elif forms[0] == "modules":
        if not isinstance(data["modules"], dict) or not data["modules"]:
            raise LadleValueError(f"{where}'modules' must be a non-empty mapping")
        modules = {str(k): _module(v, f"{where}modules.{k}", path)
                   for k, v in data["modules"].items()}
    models_in = data.get("models") if modules is None else []
    if not isinstance(models_in, list) or (modules is None and not models_in):
        raise LadleValueError(f"{where}'models' must be a non-empty list")
    models, model_params = [], []
    for i, entry in enumerate(models_in):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise LadleValueError(f"{where}models[{i}]: expected a mapping with 'model'")
        refuse_unknown_keys(entry, sorted(MODEL_KEYS), f"{where}models[{i}]: ")
        model = _model_path(entry["model"], where, f"models[{i}].model", path)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise LadleValueError(f"{where}models[{i}].parameters must be a mapping")
        if (base is not None and model.resolve() == base.resolve()
                and method not in ("linear", "passthrough")):
            continue  # the base listed among the models (its parameters are unused)
        for key, value in params.items():
            _check_setting(value, f"{where}models[{i}].parameters.{key}")
        models.append(model)
        model_params.append(params)
    for key, value in parameters.items():
        _check_setting(value, f"{where}parameters.{key}")
    check_parameter_names(method, parameters, model_params, where)
    for module in (modules or {}).values():
        levels = [module.parameters] + [sl.parameters for sl in module.slices or []]
        sources = [s.parameters for sl in module.slices or [] for s in sl.sources]
        sources += [p for _, p in module.models or []]
        for level in levels:
            check_parameter_names(method, level, sources, where)
    dtype = None
    for key in ("out_dtype", "dtype"):
        value = data.get(key)
        if value is not None:
            name = str(value).removeprefix("torch.").lower()
            if name not in _DTYPES:
                raise LadleValueError(f"{where}{key}: unsupported dtype {value!r} "
                                      f"(bfloat16, float16, float32, float64)")
            dtype = dtype or _DTYPES[name]
    tokenizer = None
    ts = data.get("tokenizer_source")
    if ts is not None and data.get("tokenizer") is not None:
        raise LadleValueError(f"{where}give either tokenizer_source or a tokenizer: block, "
                              f"not both")
    if ts is not None:
        ref = ts.removeprefix("model:") if isinstance(ts, str) else ts
        from .tokenizer import TokenizerSpec

        tokenizer = TokenizerSpec(ts if ts in ("base", "union") else
                                  _model_path(ref, where, "tokenizer_source", path))
    elif data.get("tokenizer") is not None:
        from .tokenizer import parse_tokenizer

        tokenizer = parse_tokenizer(data["tokenizer"], where,
                                    lambda ref, key: _model_path(ref, where, key, path))
    template = data.get("chat_template")
    if template is not None:
        template = _chat_template(str(template), where)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LadleValueError(f"{where}seed must be a non-negative integer, got {seed!r}")
    recipe = Recipe(path, method, base, models, model_params, parameters, dtype,
                    None, template, seed, modules=modules, tokenizer=tokenizer)
    if tokenizer is not None and tokenizer.source != "union":
        recipe.tokenizer_source = (recipe.referenced_models()[0] if tokenizer.source == "base"
                                   else Path(tokenizer.source))
    return recipe


def _module(data: Any, where: str, path: Path | None) -> OutputModule:
    """One ``modules:`` entry (or the ``slices:`` list): slices or models."""
    if not isinstance(data, dict):
        raise LadleValueError(f"{where}: expected a mapping with 'slices' or 'models'")
    refuse_unknown_keys(data, ("slices", "models", "parameters"), f"{where}: ")
    params = _settings(data.get("parameters"), f"{where}.parameters")
    if (data.get("slices") is None) == (data.get("models") is None):
        raise LadleValueError(f"{where}: exactly one of 'slices' or 'models' is required")
    if data.get("models") is not None:
        if not isinstance(data["models"], list) or not data["models"]:
            raise LadleValueError(f"{where}.models must be a non-empty list")
        models = []
        for i, entry in enumerate(data["models"]):
            entry = {"model": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or "model" not in entry or set(entry) - MODEL_KEYS:
                raise LadleValueError(f"{where}.models[{i}]: expected a mapping with 'model' "
                                      f"(and 'parameters')")
            models.append((_model_path(entry["model"], f"{where}.models[{i}]: ", "model", path),
                           _settings(entry.get("parameters"), f"{where}.models[{i}].parameters")))
        return OutputModule(None, models, params)
    slices_in = data["slices"]
    if not isinstance(slices_in, list) or not slices_in:
        raise LadleValueError(f"{where}: 'slices' must be a non-empty list")
    slices = []
    for i, sl in enumerate(slices_in):
        at = f"{where}[{i}]"
        if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list) \
                or not sl["sources"]:
            raise LadleValueError(f"{at}: expected a mapping with a non-empty 'sources' list")
        refuse_unknown_keys(sl, sorted(SLICE_KEYS), f"{at}: ")
        if sl.get("residual_weight") is not None:
            import warnings

            from ..errors import LadleWarning

            warnings.warn(f"{at}.residual_weight has no effect (mergekit parses it but does "
                          f"not use it either)", LadleWarning, stacklevel=2)
        sources = []
        for j, src in enumerate(sl["sources"]):
            sat = f"{at}.sources[{j}]"
            if not isinstance(src, dict) or set(src) - SOURCE_KEYS or "model" not in src:
                raise LadleValueError(f"{sat}: expected a mapping with 'model', 'layer_range' "
                                      f"(and 'parameters')")
            lr = src.get("layer_range")
            if (not isinstance(lr, list) or len(lr) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)):
                raise LadleValueError(f"{sat}.layer_range: expected [start, end) integers, "
                                      f"got {lr!r}")
            sources.append(SliceSource(_model_path(src["model"], f"{sat}: ", "model", path),
                                       (lr[0], lr[1]),
                                       _settings(src.get("parameters"), f"{sat}.parameters")))
        base = (_model_path(sl["base_model"], f"{at}: ", "base_model", path)
                if sl.get("base_model") is not None else None)
        slices.append(OutputSlice(sources, base, _settings(sl.get("parameters"),
                                                           f"{at}.parameters")))
    return OutputModule(slices, None, params)


def _settings(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LadleValueError(f"{where} must be a mapping")
    for key, value in data.items():
        _check_setting(value, f"{where}.{key}")
    return data


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
    """A local model path, or the name of a LoRA reference ``model+adapter``
    (:mod:`ladle.methods.lora_apply`)."""
    if not isinstance(ref, str) or not ref:
        raise LadleValueError(f"{where}{key}: expected a model path, got {ref!r}")

    def resolve(text: str) -> Path | None:
        candidates = [Path(text)]
        if recipe_path is not None and not Path(text).is_absolute():
            candidates.append(recipe_path.parent / text)
        return next((c for c in candidates if c.exists()), None)

    found = resolve(ref)
    if found is not None:
        return found
    try:
        lora = split_lora_ref(ref, resolve)
    except LadleValueError as e:
        raise LadleValueError(f"{where}{key}: {e}") from None
    if lora is not None:
        return lora_ref_path(*lora)
    raise LadleValueError(f"{where}{key}: model '{ref}' not found locally (ladle reads local "
                          f"checkpoints only; it does not download)")


def _chat_template(value: str, where: str) -> str:
    if value in BUILTIN_TEMPLATES or value == "auto":
        return BUILTIN_TEMPLATES.get(value, value)
    if len(value) >= 20 and "{" in value:
        return value
    raise LadleValueError(f"{where}chat_template: '{value}' is neither Jinja text nor a "
                          f"built-in name ({', '.join(BUILTIN_TEMPLATES)}, auto)")


def extra_files(recipe: Recipe) -> list[Path]:
    """Non-weight files for the output: those of the base (or first model), with the
    tokenizer files taken from ``tokenizer_source`` instead when it is set."""
    donor = open_model(recipe.referenced_models()[0])
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
    """Run a parsed recipe; options are those of :func:`ladle.methods.methods.merge_models`.

    With a tokenizer source, the output vocabulary is built first and every
    model's embedding rows are permuted into it (:mod:`ladle.methods.tokenizer`), in a
    scratch directory beside the output that is removed afterwards.
    """
    import warnings

    from ..engine.output import checked_output
    from ..errors import LadleWarning
    from ..formats.checkpoint import open_checkpoint

    models = recipe.referenced_models()
    loras = [m for m in models if is_lora_ref(m)]
    on_disk = [p for m in models for p in (parts(m) if m in loras else (m,))]
    checked_output(out, [*on_disk, recipe.tokenizer_source],
                   overwrite=options.get("overwrite", False))  # before reading any header
    options.setdefault("dtype", recipe.dtype)
    template = resolve_chat_template(recipe)
    files = extra_files(recipe)
    spec = recipe.tokenizer
    if spec is None and not loras:
        return _merge(recipe, out, files, None, None, template, **options)
    from .tokenizer import build_vocabulary, permute_embeddings, remove_scratch, scratch_dir

    if options.get("resume") or options.get("distributed"):
        # The permuted embeddings and merged-in adapters are rewritten beside the
        # output on every run (by every rank), so neither a resume nor a split
        # across ranks holds.
        what = "tokenizer_source: a tokenizer recipe" if spec is not None else (
            f"LoRA reference '{loras[0]}': a recipe with LoRA references")
        raise LadleValueError(f"{what} runs in one process without --resume or --distributed")
    vocab = None
    if spec is not None:
        try:
            vocab = build_vocabulary(spec, recipe.base_model, models)
        except LadleValueError as e:
            if spec.block or spec.source == "union":
                raise
            warnings.warn(f"{e}; copying the tokenizer files of {recipe.tokenizer_source} "
                          f"without remapping embedding rows", LadleWarning, stacklevel=2)
        else:
            files = [f for f in files if f.name not in TOKENIZER_FILES]
    if vocab is None and not loras:
        return _merge(recipe, out, files, None, None, template, **options)
    scratch = scratch_dir(Path(out))
    try:
        # LoRA references first (their adapters merged into their models), then the
        # embeddings of those views permuted into the output vocabulary.
        views = {m: lora_view(m, scratch, loras.index(m)) if m in loras else open_checkpoint(m)
                 for m in models}
        if vocab is not None:
            views = permute_embeddings(spec, vocab, views, recipe.base_model, scratch,
                                       _contributors(recipe))
        return _merge(recipe, out, files, views, vocab, template, **options)
    finally:
        remove_scratch(scratch)


def _contributors(recipe: Recipe):
    """Which models a recipe merges into an embedding: all of them for ``models:``;
    for slices, the first slice's sources (input embeddings) or the last slice's
    (output heads) of the first module, as mergekit's pre/post weights."""
    if recipe.modules is None:
        return None
    from .slices import PRE_WEIGHT

    module = next(iter(recipe.modules.values()))
    if module.slices is None:
        return None
    first = [s.model for s in module.slices[0].sources]
    last = [s.model for s in module.slices[-1].sources]
    return lambda name: first if PRE_WEIGHT.search(name) else last


def _merge(recipe: Recipe, out, files: list[Path], views, vocab, template: str | None,
           **options):
    """The recipe's merge over ``views`` (checkpoints with permuted embeddings)
    when given; with ``vocab``, the output tokenizer and config's vocab_size too."""
    import json

    from .methods import merge_models

    finish = None
    if vocab is not None:
        from .tokenizer import with_vocabulary

        def finish(output) -> None:
            if template is not None:
                vocab.tokenizer.chat_template = template
            vocab.tokenizer.save_pretrained(str(output.partial))
            config = output.partial / "config.json"
            if config.is_file():
                data = with_vocabulary(json.loads(config.read_text()), vocab)
                config.write_text(json.dumps(data, indent=2) + "\n")
    if recipe.modules is not None:
        from .slices import merge_slices

        return merge_slices(recipe, out, extra_files=files, ckpts=views, finish=finish,
                            chat_template=template, **options)

    def view(m):
        return views[m] if views is not None else m

    return merge_models(recipe.method, [view(m) for m in recipe.models], out,
                        base_model=view(recipe.base_model) if recipe.base_model else None,
                        parameters=recipe.parameters,
                        model_parameters=list(recipe.model_parameters), seed=recipe.seed,
                        extra_files=files, chat_template=template, finish=finish, **options)


def resolve_chat_template(recipe: Recipe) -> str | None:
    """The recipe's template text; ``auto`` is the most common template among the
    models (mergekit's rule; the first seen wins a tie)."""
    from collections import Counter

    from ..engine.path_safety import read_regular_file

    if recipe.chat_template != "auto":
        return recipe.chat_template
    counts: Counter[str] = Counter()
    for m in recipe.referenced_models():
        text = None
        try:
            if (m / "chat_template.jinja").is_file():
                text = read_regular_file(m / "chat_template.jinja", MAX_RECIPE_BYTES).decode()
            elif (m / "tokenizer_config.json").is_file():
                import json

                cfg = json.loads(read_regular_file(m / "tokenizer_config.json", 1 << 26))
                text = cfg.get("chat_template") if isinstance(cfg, dict) else None
        except (OSError, ValueError):
            text = None
        if isinstance(text, str) and text:
            counts[text] += 1
    if not counts:
        raise LadleValueError("chat_template: auto: none of the models has a chat template")
    return counts.most_common(1)[0][0]
