"""mergekit's ``slices:`` and ``modules:`` recipes: layer ranges of several models
stacked into one (frankenmerges, depth upscaling), each slice optionally merged
across its sources with the recipe's method.

Layers are found as mergekit's inference does: the first ``.<number>.`` path
component of a tensor name splits it into a module prefix (``model.layers``), a
layer index and the rest. Output layers are numbered contiguously per module, in
the order of the slices; tensors outside the layers come from the sources of the
first slice (embeddings: names with ``embed``/``wte``/``wpe``) or of the last slice
(everything else: final norm, ``lm_head``), as mergekit's pre/post weights do.
Nothing is loaded: each output tensor is a job over byte ranges of the inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LadleValueError, MismatchError
from ..formats.checkpoint import Checkpoint

LAYER = re.compile(r"\.(\d+)\.")
PRE_WEIGHT = re.compile(r"embed|(^|\.)(wte|wpe)\.")
# config.json lists with one entry per layer, rebuilt from the sources' entries
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")


@dataclass
class SliceSource:
    model: Path
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSlice:
    sources: list[SliceSource]
    base_model: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputModule:
    """One module's output: slices (``models:`` in a module become one slice over
    every layer of each model once the checkpoints are open)."""

    slices: list[OutputSlice] | None
    models: list[tuple[Path, dict[str, Any]]] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layout:
    """One checkpoint's tensor names split into modules and loose tensors."""

    layers: dict[str, dict[int, list[str]]]  # prefix -> layer index -> suffixes in order
    loose: list[str]

    def n_layers(self, prefix: str) -> int:
        return max(self.layers.get(prefix, {-1: []})) + 1


def split_layers(ckpt: Checkpoint) -> Layout:
    layers: dict[str, dict[int, list[str]]] = {}
    loose = []
    for name in ckpt.tensors:
        m = LAYER.search(name)
        if m is None:
            loose.append(name)
            continue
        prefix, idx = name[:m.start()], int(m.group(1))
        layers.setdefault(prefix, {}).setdefault(idx, []).append(name[m.end():])
    return Layout(layers, loose)


def layer_name(prefix: str, idx: int, suffix: str) -> str:
    return f"{prefix}.{idx}.{suffix}"


def chain_settings(*levels: dict[str, Any]) -> dict[str, Any]:
    """mergekit's lookup order (slice, then module, then recipe parameters) as one
    setting per key: each level's value becomes ``{filter, value}`` conditions and
    the conditions are concatenated, so a level whose filters all miss falls
    through to the next, as in mergekit's ConfigReader."""
    out: dict[str, list] = {}
    for level in levels:
        for key, value in (level or {}).items():
            conds = value if isinstance(value, list) and value and all(
                isinstance(c, dict) for c in value) else [
                value if isinstance(value, dict) else {"value": value}]
            out.setdefault(key, []).extend(conds)
    return out


@dataclass
class SlicePlan:
    tensors: list  # MethodTensor, in output order
    module_layers: dict[str, int]  # prefix -> output layer count
    layer_sources: dict[str, list[tuple[Path, int]]]  # prefix -> (model, source layer)


def plan_slices(method: str, modules: dict[str, OutputModule], base_model: Path | None,
                parameters: dict[str, Any], ckpts: dict[Path, Checkpoint], *,
                dtype: str | None, include: str | list[str] | None,
                exclude: str | list[str] | None, rescale_mode: str,
                int_policy: str = "first") -> SlicePlan:
    """Output tensors of a ``modules:`` recipe (``slices:`` is the one-module case)."""
    from ..formats.patterns import as_patterns, selected
    from .methods import method_tensors

    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")

    layouts = {p: split_layers(c) for p, c in ckpts.items()}
    donor = base_model or _first_model(modules)
    prefixes = sorted(layouts[donor].layers)
    named = _module_prefixes(modules, prefixes, donor)
    loose = _assign_loose(layouts[donor].loose, list(named.values()))
    result = SlicePlan([], {}, {})
    for key, prefix in named.items():
        module = modules[key]
        slices = module.slices or [OutputSlice(
            [SliceSource(m, (0, layouts[m].n_layers(prefix)), p) for m, p in module.models or []]
            + ([SliceSource(base_model, (0, layouts[base_model].n_layers(prefix)))]
               if base_model is not None and base_model not in [m for m, _ in module.models]
               else []))]
        out_idx = 0
        pre = [n for n in loose[prefix] if PRE_WEIGHT.search(n)]
        post = [n for n in loose[prefix] if not PRE_WEIGHT.search(n)]
        groups: list[tuple[OutputSlice, dict[str, list[str]], dict[str, float]]] = []
        if pre:
            groups.append((slices[0], {n: [n] * len(slices[0].sources) for n in pre},
                           {n: 0.0 for n in pre}))
        layer_sources = []
        for i, sl in enumerate(slices):
            lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
            if len(lengths) != 1:
                raise LadleValueError(f"module '{key}' slices[{i}]: every source must span the "
                                      f"same number of layers, got layer_range "
                                      f"{[list(s.layer_range) for s in sl.sources]}")
            n = lengths.pop()
            for s in sl.sources:
                have = layouts[s.model].n_layers(prefix)
                lo, hi = s.layer_range
                if not 0 <= lo < hi <= have:
                    raise LadleValueError(f"module '{key}' slices[{i}]: layer_range [{lo}, {hi}) "
                                          f"of {s.model} is outside its {have} layers of "
                                          f"'{prefix}'")
            names: dict[str, list[str]] = {}
            positions: dict[str, float] = {}
            for j in range(n):
                ref = sl.sources[0]
                for suffix in layouts[ref.model].layers[prefix][ref.layer_range[0] + j]:
                    out = layer_name(prefix, out_idx, suffix)
                    names[out] = [layer_name(prefix, s.layer_range[0] + j, suffix)
                                  for s in sl.sources]
                    positions[out] = j / (n - 1) if n > 1 else 1.0
                layer_sources.append((ref.model, ref.layer_range[0] + j))
                out_idx += 1
            groups.append((sl, names, positions))
        if post:
            groups.append((slices[-1], {n: [n] * len(slices[-1].sources) for n in post},
                           {n: 0.0 for n in post}))
        for sl, names, positions in groups:
            names = {o: i for o, i in names.items() if selected(o, include, exclude)}
            if not names:
                continue
            base, models, model_params = _group_inputs(method, sl, base_model, ckpts, names)
            result.tensors += method_tensors(
                method, base, models,
                parameters=chain_settings(sl.parameters, module.parameters, parameters),
                model_parameters=model_params, dtype=dtype, rescale_mode=rescale_mode,
                positions=positions, int_policy=int_policy)
        result.module_layers[prefix] = out_idx
        result.layer_sources[prefix] = layer_sources
    if not result.tensors:
        raise LadleValueError(f"no tensors selected (include={include}, exclude={exclude})")
    return result


def _first_model(modules: dict[str, OutputModule]) -> Path:
    module = next(iter(modules.values()))
    return module.slices[0].sources[0].model if module.slices else module.models[0][0]


def _module_prefixes(modules: dict[str, OutputModule], prefixes: list[str],
                     donor: Path) -> dict[str, str]:
    """Recipe module name -> layer prefix. ``default`` (or the ``slices:`` form)
    names the only module of a one-module model; otherwise a module is named by
    its prefix (``model.layers``), and every module must be covered."""
    if not prefixes:
        raise LadleValueError(f"{donor}: no layers found (no tensor name has a '.N.' layer "
                              f"index); slices need layered models")
    named = {}
    for key in modules:
        if key in prefixes:
            named[key] = key
        elif key == "default" and len(prefixes) == 1:
            named[key] = prefixes[0]
        else:
            raise LadleValueError(f"modules: '{key}' is not a module of {donor} (its layer "
                                  f"prefixes: {', '.join(prefixes)}"
                                  + ("; 'default' names the only one" if len(prefixes) == 1
                                     else "") + ")")
    missing = sorted(set(prefixes) - set(named.values()))
    if missing:
        raise LadleValueError(f"modules: {', '.join(missing)} of {donor} not covered: every "
                              f"module needs slices or models (its weights would be "
                              f"missing from the output)")
    return named


def _assign_loose(names: list[str], prefixes: list[str]) -> dict[str, list[str]]:
    """Tensors outside the layers go with the module whose parent path they share
    most of (``model.embed_tokens`` with ``model.layers``); else the first module."""
    out: dict[str, list[str]] = {p: [] for p in prefixes}
    def shared(name: str, prefix: str) -> int:
        parent = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
        return len(parent) if name.startswith(parent) else -1

    for name in names:
        best = max(prefixes, key=lambda p: shared(name, p))  # max keeps the first of equals
        out[best].append(name)
    return out


def _group_inputs(method: str, sl: OutputSlice, recipe_base: Path | None,
                  ckpts: dict[Path, Checkpoint], names: dict[str, list[str]]):
    """Virtual checkpoints of one slice's sources holding the output names: the
    base (the slice's or the recipe's base_model, which must be a source when the
    method needs one) and the other sources with their parameters."""
    from .methods import METHODS, _tensor_of

    base_ref = sl.base_model or recipe_base
    spec = METHODS[method]
    views = []
    for k, src in enumerate(sl.sources):
        real = ckpts[src.model]
        tensors = {}
        for out, ins in names.items():
            info = real.tensors.get(ins[k])
            if info is None and ins[k] == out:  # a loose tensor: lm_head may be tied
                like = ckpts[sl.sources[0].model].tensors.get(out)
                info = _tensor_of(real, out, like) if like is not None else None
            if info is None:
                raise MismatchError(f"{src.model}: tensor '{ins[k]}' is missing (needed for "
                                    f"'{out}')")
            tensors[out] = info._replace(name=out)
        views.append(Checkpoint(real.path, tensors, real.metadata, real.file_sizes,
                                real.extra_files))
    base_index = None
    if spec.needs_base:
        for k, src in enumerate(sl.sources):
            if base_ref is not None and src.model.resolve() == base_ref.resolve():
                base_index = k
                break
        else:
            raise LadleValueError(f"{method} needs the base model among each slice's sources "
                                  f"(base_model {base_ref}; sources "
                                  f"{', '.join(str(s.model) for s in sl.sources)})")
    models = [v for k, v in enumerate(views) if k != base_index]
    params = [dict(s.parameters) for k, s in enumerate(sl.sources) if k != base_index]
    return (views[base_index] if base_index is not None else None), models, params


def rewritten_config(config: dict[str, Any], plan: SlicePlan,
                     configs: dict[Path, dict[str, Any]], donor_layers: dict[str, int]
                     ) -> dict[str, Any]:
    """The donor's config.json with the layer count (and per-layer lists such as
    ``layer_types``) of every module whose count changed rewritten.

    The count lives in ``num_hidden_layers`` (top level, else ``text_config``);
    a module whose count changes but matches neither is refused: ladle cannot
    tell which key holds it.
    """
    out = json.loads(json.dumps(config))
    for prefix, n_out in plan.module_layers.items():
        n_in = donor_layers[prefix]
        holder = None
        for cfg in (out, out.get("text_config")):
            if isinstance(cfg, dict) and cfg.get("num_hidden_layers") == n_in:
                holder = cfg
                break
        if holder is None:
            if n_out != n_in:
                raise LadleValueError(f"config.json: no num_hidden_layers equal to the {n_in} "
                                      f"layers of '{prefix}'; cannot record its new count "
                                      f"{n_out}")
            continue
        path = [] if holder is out else ["text_config"]
        holder["num_hidden_layers"] = n_out
        for key in PER_LAYER_CONFIG_KEYS:
            if isinstance(holder.get(key), list):
                values = []
                for model, idx in plan.layer_sources[prefix]:
                    src = configs.get(model, {})
                    for p in path:
                        src = src.get(p, {})
                    entries = src.get(key)
                    if not isinstance(entries, list) or idx >= len(entries):
                        raise LadleValueError(f"{model}/config.json: '{key}' has no entry for "
                                              f"layer {idx}")
                    values.append(entries[idx])
                holder[key] = values
    return out


def merge_slices(recipe, out, *, extra_files: list[Path], dtype: str | None = None,
                 include: list[str] | None = None, exclude: list[str] | None = None,
                 max_shard_size: int | str = "5GB", overwrite: bool = False,
                 rescale_mode: str = "l1", ckpts: dict[Path, Checkpoint] | None = None,
                 finish=None, int_policy: str = "first", **run_options):
    """Run a ``slices:``/``modules:`` recipe (:class:`ladle.methods.recipe.Recipe`) into
    ``out``: the stacked tensors, the donor's files and a config.json whose layer
    count matches. ``ckpts`` replaces the opened models (views with permuted
    embeddings); ``finish(output)`` runs after the config is written.
    ``run_options`` are those of :func:`ladle.methods.methods.write_method_plan`."""
    from .. import _core
    from ..engine._units import parse_size
    from ..engine.output import checked_output
    from ..engine.path_safety import read_regular_file
    from ..engine.plan import check_int_policy
    from ..formats.checkpoint import open_checkpoint
    from .methods import layout_method_plan, write_method_plan

    models = recipe.referenced_models()
    output = checked_output(out, [*models, *extra_files, *(f.parent for f in extra_files)],
                            overwrite=overwrite)
    ckpts = ckpts or {m: open_checkpoint(m) for m in models}
    plan = plan_slices(recipe.method, recipe.modules, recipe.base_model, recipe.parameters,
                       ckpts, dtype=dtype, include=include, exclude=exclude,
                       rescale_mode=rescale_mode, int_policy=int_policy)
    metadata = {"ladle_method": recipe.method,
                "ladle_inputs": json.dumps([str(m) for m in models]),
                "ladle_recipe": "slices",
                "ladle_int_policy": check_int_policy(int_policy),
                "ladle_version": _core.build_info()["version"]}
    method_plan = layout_method_plan(recipe.method, plan.tensors, parse_size(max_shard_size, "max_shard_size", 1),
                                     output.single_file, metadata)
    donor = models[0]
    config_file = next((f for f in extra_files if f.name == "config.json"), None)
    then = finish
    finish = then
    if config_file is not None:
        def read_config(path: Path) -> dict:
            try:
                return json.loads(read_regular_file(path, 1 << 24))
            except (OSError, ValueError) as e:
                raise LadleValueError(f"{path}: cannot read the config: {e}") from None

        configs = {m: read_config(m / "config.json") for m in models
                   if (m / "config.json").is_file()}
        donor_layers = {p: split_layers(ckpts[donor]).n_layers(p) for p in plan.module_layers}
        config = rewritten_config(read_config(config_file), plan, configs, donor_layers)
        extra_files = [f for f in extra_files if f.name != "config.json"]

        def finish(output) -> None:
            (output.partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if then is not None:
                then(output)
    run_options.setdefault("chat_template", recipe.chat_template)
    return write_method_plan(method_plan, list(ckpts.values()), output, extra_files,
                             finish=finish,
                             seed=recipe.seed, **run_options)
