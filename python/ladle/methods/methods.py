"""Merge methods beyond a weighted sum, streamed through the C++ engine.

Every method is a per-tensor program (docs/methods.md gives each formula, its paper
and the exact order of fp32 operations):

- ``linear``: ``Σ_k (w_k / Σ w) θ_k`` (``normalize``) or ``Σ_k w_k θ_k``.
- ``task_arithmetic``: ``θ_b + λ Σ_k w_k (θ_k − θ_b)``.
- ``ties``: deltas trimmed to the ``density`` largest magnitudes, sign elected by the
  weighted sum, disjoint (weight-normalised) mean of the agreeing deltas.
- ``dare_linear`` / ``dare_ties``: deltas dropped at random (keep probability
  ``density``, a counter-based RNG keyed by seed, tensor, model and element) and
  rescaled, then summed (linear) or sign-elected (ties).
- ``breadcrumbs`` / ``breadcrumbs_ties``: deltas keep the magnitudes between the top
  ``gamma`` outliers and the ``density`` quota.
- ``della`` / ``della_linear``: MAGPRUNE (DELLA): deltas dropped at random with a keep
  probability rising with the element's magnitude rank in its row (``density`` ±
  ``epsilon``), rescaled, then sign-elected (della) or summed (della_linear).
- ``sce``: the elements whose deltas vary most across the models (top ``select_topk``
  by variance) are kept, each model weighted by its kept deltas' mean square, deltas
  against the elected sign erased, then the weighted mean of the rest.
- ``slerp``: spherical interpolation per tensor from streamed norms and dot
  product; linear interpolation when the tensors are (anti)colinear.
- ``model_stock``: ``t·mean(θ_k) + (1 − t)·θ_b`` with ``t`` from the mean pairwise
  cosine of the deltas (per tensor, or per row with ``filter_wise``).
- ``nuslerp``: SLERP of two models (or of their deltas from a base, then added to
  it) with ``t = w_2 / (w_1 + w_2)``, per tensor or per row (``nuslerp_flatten: false``),
  or per column (also ``nuslerp_row_wise: true``; :mod:`ladle.methods.nuslerp_columns`).
- ``nearswap``: per element, ``w = clamp(t / max(|θ_b − θ_1|, 1e-6), 0, 1)``,
  ``w·θ_1 + (1 − w)·θ_b``: the base is kept where the models differ much.
- ``arcee_fusion``: ``θ_b + δ·[s ≥ median + 1.5·IQR]`` with importance
  ``s = |δ|·KL(softmax θ_1 ‖ softmax θ_b)`` per row (:mod:`ladle.methods.fusion`).
- ``multislerp`` / ``karcher``: weighted spherical mean of N models (or of their
  deltas from a base) / Riemannian mean of N models, as coefficients of a weighted
  sum computed from the streamed Gram matrix (:mod:`ladle.methods.sphere`).

Parameters may vary per tensor: a value is a number, a gradient (a list of numbers
interpolated across layer indices) or a list of ``{"filter": substring, "value": v}``
conditions, as in mergekit.

Example:
    >>> ladle.methods.methods.merge_models("ties", ["ft1/", "ft2/"], "out/", base_model="base/",
    ...     model_parameters=[{"weight": 1, "density": 0.5}] * 2)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _core
from ..engine._units import engine_options
from ..engine.cuda import rank_device
from ..engine.distributed import run_merge, wanted
from ..engine.fp8_blocks import block_scales
from ..engine.kinds import ENGINE_KINDS, JobKind, Kernel, core_enum, core_kinds, parse_kind
from ..engine.output import OutputDir, checked_output, write_atomically
from ..engine.plan import (
    _ITEM_BYTES,
    Shard,
    check_int_policy,
    describe_op,
    layout_shards,
    nonfloat_inputs,
    normalize_dtype,
)
from ..engine.shard_sinks import open_shard_sinks
from ..errors import LadleValueError, MismatchError
from ..formats._bulk import bulk_objects
from ..formats.checkpoint import Checkpoint, TensorInfo, _preview
from ..formats.set_checkpoint import open_inputs, refuse_memory_inputs, same_input
from .merge import CheckpointLike, MergeReport, PathLike, _check_device, _progress_bar, plan_hash
from .method_engine import MethodEngine
from .sphere import SPHERE_METHODS, sphere_coefficients


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs: base model, parameters and their defaults.

    ``None`` as a default marks a required parameter.
    """

    name: str
    needs_base: bool
    model_params: dict[str, Any]   # per input model (mergekit: NON_BASE / INPUT scope)
    global_params: dict[str, Any]  # shared by all models
    sparsify: str = "none"
    consensus: str = "none"
    min_models: int = 1
    max_models: int | None = None


_TASK_GLOBALS = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}

METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec("linear", False, {"weight": None}, {"normalize": True}),
    "task_arithmetic": MethodSpec("task_arithmetic", True, {"weight": None, "density": 1.0},
                                  dict(_TASK_GLOBALS)),
    "ties": MethodSpec("ties", True, {"weight": None, "density": 1.0},
                       {**_TASK_GLOBALS, "normalize": True}, "magnitude", "sum"),
    "dare_ties": MethodSpec("dare_ties", True, {"weight": None, "density": 1.0},
                            {**_TASK_GLOBALS, "rescale": True}, "random", "sum"),
    "dare_linear": MethodSpec("dare_linear", True, {"weight": None, "density": 1.0},
                              {**_TASK_GLOBALS, "rescale": True}, "random", "none"),
    "breadcrumbs": MethodSpec("breadcrumbs", True,
                              {"weight": None, "density": 1.0, "gamma": 0.01},
                              dict(_TASK_GLOBALS), "outliers", "none"),
    "breadcrumbs_ties": MethodSpec("breadcrumbs_ties", True,
                                   {"weight": None, "density": 1.0, "gamma": 0.01},
                                   dict(_TASK_GLOBALS), "outliers", "sum"),
    "della": MethodSpec("della", True, {"weight": None, "density": 1.0, "epsilon": 0.15},
                        {**_TASK_GLOBALS, "normalize": True, "rescale": True}, "magprune", "sum"),
    "della_linear": MethodSpec("della_linear", True,
                               {"weight": None, "density": 1.0, "epsilon": 0.15},
                               {**_TASK_GLOBALS, "rescale": True}, "magprune", "none"),
    "sce": MethodSpec("sce", True, {}, {"select_topk": 1.0, "int8_mask": False}),
    "slerp": MethodSpec("slerp", True, {}, {"t": None}, min_models=1, max_models=1),
    "model_stock": MethodSpec("model_stock", True, {}, {"filter_wise": False}, min_models=2),
    "nuslerp": MethodSpec("nuslerp", False, {"weight": None},
                          {"nuslerp_row_wise": False, "nuslerp_flatten": True}, min_models=2,
                          max_models=2),
    "nearswap": MethodSpec("nearswap", True, {}, {"t": None}, min_models=1, max_models=1),
    # multislerp/karcher: spherical means of N vectors (ladle.methods.sphere)
    "multislerp": MethodSpec("multislerp", False, {"weight": None},
                             {"normalize_weights": True, "eps": 1e-8}, min_models=1),
    "karcher": MethodSpec("karcher", False, {}, {"max_iter": 10, "tol": 1e-5}, min_models=1),
    # arcee_fusion: base + the delta where its KL-weighted importance is an outlier
    "arcee_fusion": MethodSpec("arcee_fusion", True, {}, {}, min_models=1, max_models=1),
    # mergekit's passthrough: one input, optionally scaled (frankenmerges use it per slice)
    "passthrough": MethodSpec("passthrough", False, {"scale": 1.0}, {}, min_models=1,
                              max_models=1),
}

# mergekit methods ladle recognises but does not implement, refused by name.
UNIMPLEMENTED = ("ram",)

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                   "tok_embeddings.weight")


# ---------------------------------------------------------------------------
# Parameter settings: scalar, gradient, or filtered conditions (mergekit's schema).

def resolve_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """Value of a parameter setting for one tensor at layer position ``t`` ∈ [0, 1].

    Numbers and booleans are returned as they are; a list of numbers is a gradient,
    interpolated linearly at ``t`` across its entries; a list of other scalars picks
    entry ``int(t·(len−1))``; a ``{"filter", "value"}`` mapping (or a list of them)
    applies the first whose filter is absent, ``"*"``, or a substring of the name
    (``None`` when none matches).

    Example:
        >>> resolve_setting([0.0, 1.0], "model.layers.3.mlp.weight", 0.5)
        0.5
    """
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            if not isinstance(cond, dict):
                raise LadleValueError(f"parameter setting {setting!r}: expected numbers, or "
                                      f"conditions {{filter, value}}")
            f = cond.get("filter")
            if f is None or f == "*" or (tensor_name and f in tensor_name):
                return resolve_setting(cond["value"], tensor_name, t)
        return None
    raise LadleValueError(f"unexpected parameter setting {setting!r}")


def layer_positions(names: Sequence[str]) -> dict[str, float]:
    """``t`` of every tensor: layer index / (number of layers − 1) for names with a
    numeric path component (``model.layers.7.…``), 0 for the others (embeddings,
    final norm, lm_head — mergekit evaluates those at t = 0 too); 1 when there is
    exactly one layer."""
    index = {}
    for n in names:
        m = _LAYER.search(n)
        if m:
            index[n] = int(m.group(1))
    n_layers = max(index.values(), default=-1) + 1
    out = {}
    for n in names:
        if n not in index:
            out[n] = 0.0
        else:
            out[n] = index[n] / (n_layers - 1) if n_layers > 1 else 1.0
    return out


# ---------------------------------------------------------------------------
# Planning.

@dataclass
class MethodTensor:
    """One output tensor: how it is computed and where it goes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    op: str  # "copy", "sum", "task", "della", "sce", "slerp", "model_stock", "nuslerp", ...
    inputs: list[tuple[TensorInfo, float]]  # base first when the method has one
    n_bytes: int
    n_elems: int
    params: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] | None = None  # op "task"/"della": sparsify/consensus/... per model
    shard: int = -1
    offset: int = 0


@dataclass
class MethodPlan:
    method: str
    tensors: list[MethodTensor]
    shards: list[Shard]
    sharded: bool
    metadata: dict[str, str]

    @property
    def bytes_written(self) -> int:
        return sum(s.n_bytes for s in self.shards)

    @property
    def bytes_read(self) -> int:
        return sum(info.n_bytes for t in self.tensors for info, _ in t.inputs)


def _tensor_of(ckpt: Checkpoint, name: str, like: TensorInfo) -> TensorInfo:
    """``name`` in ``ckpt``; a missing lm_head resolves to the tied input embedding."""
    info = ckpt.tensors.get(name)
    if info is None and name.endswith("lm_head.weight"):
        tied = [t for n, t in ckpt.tensors.items()
                if n.endswith(_EMBED_SUFFIXES) and t.shape == like.shape]
        if len(tied) == 1:
            info = tied[0]
    if info is None:
        raise MismatchError(f"{ckpt.path}: tensor '{name}' is missing (present in "
                            f"{like.file})")
    if info.shape != like.shape:
        raise MismatchError(f"tensor '{name}': shape {list(info.shape)} in {info.file} differs "
                            f"from {list(like.shape)} in {like.file}")
    return info


def _check_extra(reference: Checkpoint, others: list[Checkpoint], selected) -> None:
    for ckpt in others:
        extra = sorted(n for n in ckpt.tensors if selected(n) and n not in reference.tensors
                       and not n.endswith("lm_head.weight"))
        if extra:
            raise MismatchError(f"{ckpt.path}: {len(extra)} tensor(s) not in {reference.path}: "
                                f"{_preview(extra)}")


def _resolve_params(spec: MethodSpec, name: str, t: float, parameters: dict[str, Any],
                    model_parameters: list[dict[str, Any]]) -> tuple[dict, list[dict]]:
    glob = {}
    for key, default in spec.global_params.items():
        value = resolve_setting(parameters[key], name, t) if key in parameters else None
        if value is None:
            value = default
        if value is None:
            raise LadleValueError(f"{spec.name}: parameter '{key}' is required "
                                  f"(no value for tensor '{name}')")
        glob[key] = value
    per_model = []
    for k, mp in enumerate(model_parameters):
        values = {}
        for key, default in spec.model_params.items():
            value = None
            for source in (mp, parameters):  # the model's own setting wins
                if key in source:
                    value = resolve_setting(source[key], name, t)
                    if value is not None:
                        break
            if value is None:
                value = default
            if value is None:
                raise LadleValueError(f"{spec.name}: parameter '{key}' of model {k} is required "
                                      f"(no value for tensor '{name}')")
            values[key] = value
        per_model.append(values)
    return glob, per_model


def _as_float(method: str, key: str, value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LadleValueError(f"{method}: parameter '{key}' must be a number, got {value!r} "
                              f"for tensor '{name}'")
    value = float(value)
    if not math.isfinite(value):
        raise LadleValueError(f"{method}: parameter '{key}' must be finite, got {value!r} "
                              f"for tensor '{name}'")
    return value


def _as_bool(method: str, key: str, value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise LadleValueError(f"{method}: '{key}' must be true or false, got {value!r} "
                              f"for tensor '{name}'")
    return value


def _rank_range(sparsify: str, density: float, gamma: float, n: int) -> tuple[int, int]:
    """Kept descending-magnitude ranks [lo, hi) (mergekit's counts)."""
    if sparsify == "magnitude":
        if density >= 1:
            return 0, n
        if density <= 0 or n == 0:
            return 0, 0
        return 0, max(1, int(density * n))
    if sparsify == "outliers":
        if density >= 1:
            return 0, n
        target = int(density * n)
        n_top = int(gamma * n)
        n_bot = max(0, n - target - n_top)
        return n - n_bot - target, n - n_bot
    return 0, n


def check_method_name(method: str, where: str = "", label: str = "merge method") -> None:
    """Refuse a method ladle does not implement, naming the ones it does; ``where``
    prefixes the message and ``label`` names the setting (a recipe's file and key)."""
    if method in UNIMPLEMENTED:
        raise LadleValueError(f"{where}{label} '{method}' is not implemented by ladle "
                              f"(implemented: {', '.join(METHODS)})")
    if method not in METHODS:
        raise LadleValueError(f"{where}unknown {label} '{method}' (implemented: "
                              f"{', '.join(METHODS)})")


def check_parameter_names(method: str, parameters: dict[str, Any],
                          model_parameters: Sequence[dict[str, Any]], where: str = "") -> None:
    """Refuse parameter names ``method`` does not take; ``where`` prefixes the message
    (a recipe's file name). Per-model names may also be given globally (mergekit)."""
    spec = METHODS[method]
    allowed_global = set(spec.global_params) | set(spec.model_params)
    for key in parameters:
        if key not in allowed_global:
            raise LadleValueError(f"{where}parameters: unknown parameter '{key}' for {method} "
                                  f"(allowed: {', '.join(sorted(allowed_global)) or 'none'})")
    for k, params in enumerate(model_parameters):
        for key in params:
            if key not in spec.model_params:
                raise LadleValueError(
                    f"{where}models[{k}].parameters: unknown parameter '{key}' for {method} "
                    f"(allowed per model: {', '.join(sorted(spec.model_params)) or 'none'})")


@bulk_objects()
def build_method_plan(method: str, base: Checkpoint | None, models: list[Checkpoint], *,
                      parameters: dict[str, Any] | None = None,
                      model_parameters: list[dict[str, Any]] | None = None,
                      dtype: str | None = None, include: str | list[str] | None = None,
                      exclude: str | list[str] | None = None, max_shard_bytes: int = 5 * 10**9,
                      single_file: bool = False, rescale_mode: str = "l1",
                      metadata: dict[str, str] | None = None,
                      int_policy: str = "first") -> MethodPlan:
    """Plan ``method`` over ``base`` and ``models`` tensor by tensor (see module doc)."""
    for ckpt in ([base] if base is not None else []) + list(models):
        if block_scales(ckpt):  # its scales would be merged as if they were weights
            raise LadleValueError(f"{ckpt.path}: block-scaled FP8 checkpoints are dequantized "
                                  f"by weighted sums only (merge --alpha/--weights, soups), "
                                  f"not by method {method!r}; dequantize to BF16 first")
    outputs = method_tensors(method, base, models, parameters=parameters,
                             model_parameters=model_parameters, dtype=dtype, include=include,
                             exclude=exclude, rescale_mode=rescale_mode, int_policy=int_policy)
    return layout_method_plan(method, outputs, max_shard_bytes, single_file, metadata)


def layout_method_plan(method: str, outputs: list[MethodTensor], max_shard_bytes: int,
                       single_file: bool, metadata: dict[str, str] | None) -> MethodPlan:
    """Assign planned tensors to output shards (in order) and serialize their headers."""
    shards, meta = layout_shards(outputs, max_shard_bytes, single_file,  # type: ignore[arg-type]
                                 metadata)
    return MethodPlan(method, outputs, shards, sharded=len(shards) > 1, metadata=meta)


def method_tensors(method: str, base: Checkpoint | None, models: list[Checkpoint], *,
                   parameters: dict[str, Any] | None = None,
                   model_parameters: list[dict[str, Any]] | None = None,
                   dtype: str | None = None, include: str | list[str] | None = None,
                   exclude: str | list[str] | None = None, rescale_mode: str = "l1",
                   positions: dict[str, float] | None = None,
                   int_policy: str = "first") -> list[MethodTensor]:
    """The output tensors of ``method`` over ``base`` and ``models``, without a layout.

    ``positions`` overrides each tensor's layer position ``t`` (a slice of a
    ``slices:`` recipe counts its own layers, as mergekit does).
    """
    from ..formats.patterns import as_patterns
    from ..formats.patterns import selected as name_selected

    check_method_name(method)
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    spec = METHODS[method]
    parameters = dict(parameters or {})
    model_parameters = [dict(p or {}) for p in (model_parameters or [{} for _ in models])]
    if len(model_parameters) != len(models):
        raise LadleValueError(f"{method}: got {len(model_parameters)} parameter set(s) for "
                              f"{len(models)} model(s)")
    check_parameter_names(method, parameters, model_parameters)
    if spec.needs_base and base is None:
        raise LadleValueError(f"{method} needs a base model (base_model)")
    if len(models) < spec.min_models or (spec.max_models and len(models) > spec.max_models):
        want = (f"exactly {spec.min_models}" if spec.max_models == spec.min_models
                else f"at least {spec.min_models}")
        raise LadleValueError(f"{method} needs {want} model(s) besides the base, "
                              f"got {len(models)}")
    out_dtype = normalize_dtype(dtype)
    reference = base if base is not None else models[0]
    others = models if base is not None else models[1:]

    def selected(n):
        return name_selected(n, include, exclude)

    _check_extra(reference, others, selected)
    names = [n for n in reference.tensors if selected(n)]
    if not names:
        raise LadleValueError(f"{reference.path}: no tensors selected (include={include}, "
                              f"exclude={exclude})")
    positions = {**layer_positions(names), **(positions or {})}
    outputs: list[MethodTensor] = []
    for name in names:
        first = reference.tensors[name]
        infos = [first] + [_tensor_of(c, name, first) for c in others]
        if not _core.dtype_is_mergeable(first.dtype):
            for info in infos[1:]:
                if info.dtype != first.dtype:
                    raise MismatchError(f"tensor '{name}': dtype {info.dtype} in {info.file} "
                                        f"differs from {first.dtype} in {first.file}")
            # Every input takes part, the base (or the first model) first.
            op, chosen = nonfloat_inputs(infos, [1.0] * len(infos), int_policy)
            outputs.append(MethodTensor(name, first.dtype, first.shape, op,
                                        [(i, 1.0) for i in chosen], first.n_bytes,
                                        first.n_elems))
            continue
        for info in infos[1:]:
            if not _core.dtype_is_mergeable(info.dtype):
                raise MismatchError(f"tensor '{name}': dtype {info.dtype} in {info.file} "
                                    f"cannot be merged with {first.dtype} in {first.file}")
        odt = out_dtype or first.dtype
        n = first.n_elems
        glob, per_model = _resolve_params(spec, name, positions[name], parameters,
                                          model_parameters)
        t = MethodTensor(name, odt, first.shape, "sum", [], n * _ITEM_BYTES[odt], n,
                         params={**glob, "models": per_model})
        model_infos = infos if base is None else infos[1:]
        if method == "linear":
            weights = [_as_float(method, "weight", p["weight"], name) for p in per_model]
            if glob["normalize"]:
                total = sum(weights)
                if total == 0.0:
                    raise LadleValueError(f"linear: weights of tensor '{name}' sum to zero "
                                          f"({weights}); set normalize: false")
                weights = [w / total for w in weights]
            t.inputs = list(zip(model_infos, weights))
        elif method == "passthrough":
            scale = _as_float(method, "scale", per_model[0]["scale"], name)
            if scale == 1.0 and odt == first.dtype:
                t.op = "copy"  # the input's bytes, NaN payloads included
            t.inputs = [(model_infos[0], scale)]
        elif method == "nearswap":
            t.op = method
            t.inputs = [(i, 1.0) for i in infos]
            t.params["t"] = _as_float(method, "t", glob["t"], name)
        elif spec.sparsify == "magprune":
            t.op = "della"
            t.task = _della_task(spec, glob, per_model, first.shape, n, name, rescale_mode)
            t.inputs = [(infos[0], 1.0)] + [(i, w) for i, (w, _, _) in
                                            zip(model_infos, t.task["models"])]
        elif method == "sce":
            t.op = method
            t.inputs = [(i, 1.0) for i in infos]
            t.params["select_topk"] = _as_float(method, "select_topk", glob["select_topk"], name)
        elif method in ("slerp", "model_stock"):
            t.op = method
            t.inputs = [(i, 0.0) for i in infos]
            if method == "slerp":
                t.params["t"] = _as_float(method, "t", glob["t"], name)
            else:
                t.params["rows"] = _as_bool(method, "filter_wise", glob["filter_wise"], name)
        elif method == "nuslerp":
            t.op = method
            t.inputs = [(i, 0.0) for i in infos]
            flatten = _as_bool(method, "nuslerp_flatten", glob["nuslerp_flatten"], name)
            row_wise = _as_bool(method, "nuslerp_row_wise", glob["nuslerp_row_wise"], name)
            # Vectors along dimension 0 (ladle.methods.nuslerp_columns); a 0-D or 1-D tensor
            # is one vector either way.
            columns = row_wise and not flatten and len(first.shape) >= 2
            w0, w1 = (_as_float(method, "weight", p["weight"], name) for p in per_model)
            t.params.update(t=0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1),
                            rows=not flatten and not columns, columns=columns,
                            has_base=base is not None)
        elif method in SPHERE_METHODS:
            _plan_sphere(t, method, glob, per_model, infos, base is not None)
        elif method == "arcee_fusion":
            t.op = method
            t.inputs = [(i, 0.0) for i in infos]
        else:
            t.op = "task"
            t.inputs = [(infos[0], 1.0)]
            rescale = glob["rescale"]
            if not isinstance(rescale, bool):
                raise LadleValueError(f"{method}: 'rescale' must be true or false")
            task_models = []
            for info, p in zip(model_infos, per_model):
                w = _as_float(method, "weight", p["weight"], name)
                density = _as_float(method, "density", p.get("density", 1.0), name)
                if not 0.0 <= density <= 1.0:
                    raise LadleValueError(f"{method}: density {density} of tensor '{name}' is "
                                          f"outside [0, 1]")
                gamma = _as_float(method, "gamma", p.get("gamma", 0.0), name)
                sparsify = spec.sparsify
                if sparsify != "none" and density >= 1.0:
                    lo, hi = 0, n  # nothing dropped
                else:
                    lo, hi = _rank_range(sparsify, density, gamma, n)
                task_models.append((w, density, lo, hi))
                t.inputs.append((info, w))
            t.task = {
                "sparsify": spec.sparsify, "consensus": spec.consensus,
                "normalize": bool(glob["normalize"]),
                "rescale": (rescale_mode if rescale else "none") if spec.sparsify != "none"
                else "none",
                "lambda": _as_float(method, "lambda", glob["lambda"], name),
                "models": task_models,
            }
        outputs.append(t)
    return outputs


def della_groups(shape: tuple[int, ...], n_elems: int) -> tuple[int, int]:
    """(group length, stride) of DELLA's rank groups: mergekit ranks along dimension 1
    (rows of a matrix; a 0-D or 1-D tensor is one group)."""
    if n_elems == 0:
        return 1, 1
    if len(shape) < 2:
        return n_elems, 1
    return shape[1], math.prod(shape[2:])


def _della_task(spec: MethodSpec, glob: dict, per_model: list[dict], shape: tuple[int, ...],
                n: int, name: str, rescale_mode: str) -> dict[str, Any]:
    """The DELLA job of one tensor: per model (weight, density, epsilon), rank groups
    and the mix; densities and epsilons are checked as mergekit checks them."""
    method = spec.name
    rescale = _as_bool(method, "rescale", glob["rescale"], name)
    models = []
    for k, p in enumerate(per_model):
        w = _as_float(method, "weight", p["weight"], name)
        density = _as_float(method, "density", p["density"], name)
        epsilon = _as_float(method, "epsilon", p["epsilon"], name)
        if not 0.0 <= density <= 1.0:
            raise LadleValueError(f"{method}: density {density} of model {k} for tensor "
                                  f"'{name}' is outside [0, 1]")
        if 0.0 < density < 1.0 and not (density - epsilon > 0.0 and density + epsilon < 1.0):
            raise LadleValueError(
                f"{method}: epsilon {epsilon} with density {density} of model {k} for tensor "
                f"'{name}' puts keep probabilities outside (0, 1) (need density - epsilon > 0 "
                f"and density + epsilon < 1)")
        models.append((w, density, epsilon))
    group_len, stride = della_groups(shape, n)
    return {"sparsify": "magprune", "consensus": spec.consensus,
            "normalize": _as_bool(method, "normalize", glob["normalize"], name),
            "rescale": rescale_mode if rescale else "none",
            "lambda": _as_float(method, "lambda", glob["lambda"], name),
            "group_len": group_len, "group_stride": stride, "models": models}


def _plan_sphere(t: MethodTensor, method: str, glob: dict[str, Any], per_model: list[dict],
                 infos: list[TensorInfo], has_base: bool) -> None:
    """Plan a multislerp or karcher tensor: its vectors and checked parameters.
    multislerp's vectors are the models' deltas when there is a base; karcher
    averages the base as one more point (mergekit gathers it with the models). A
    single vector is copied through the weighted sum, as mergekit returns it."""
    name = t.name
    if method == "karcher":
        vectors, has_base = infos, False
        max_iter = glob["max_iter"]
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
            raise LadleValueError(f"karcher: 'max_iter' must be an integer >= 0, got "
                                  f"{max_iter!r} for tensor '{name}'")
        tol = _as_float(method, "tol", glob["tol"], name)
        if tol < 0:
            raise LadleValueError(f"karcher: 'tol' must be >= 0, got {tol!r} for tensor "
                                  f"'{name}'")
        t.params.update(max_iter=max_iter, tol=tol)
    else:
        vectors = infos[1:] if has_base else infos
        weights = [_as_float(method, "weight", p["weight"], name) for p in per_model]
        if _as_bool(method, "normalize_weights", glob["normalize_weights"], name):
            total = sum(weights)
            if total == 0.0:
                raise LadleValueError(f"multislerp: weights of tensor '{name}' sum to zero "
                                      f"({weights}); set normalize_weights: false")
            weights = [w / total for w in weights]
        eps = _as_float(method, "eps", glob["eps"], name)
        if eps < 0:
            raise LadleValueError(f"multislerp: 'eps' must be >= 0, got {eps!r} for tensor "
                                  f"'{name}'")
        t.params.update(weights=weights, eps=eps)
    if len(vectors) == 1:
        t.inputs = [(vectors[0], 1.0)]  # op "sum": the vector itself
        return
    t.op = method
    t.params["has_base"] = has_base
    t.inputs = [(i, 0.0) for i in (infos if has_base else vectors)]


def describe_method_plan(plan: MethodPlan) -> str:
    """Human-readable plan for ``--dry-run``."""
    lines = [(f"{plan.method}: {len(plan.tensors)} tensors -> {len(plan.shards)} shard(s); "
              f"writes {plan.bytes_written} bytes")]
    for shard in plan.shards:
        lines.append(f"  {shard.file_name}: {len(shard.tensors)} tensors, {shard.n_bytes} bytes")
    for t in plan.tensors:
        if t.op in ("copy", "max", "sum"):
            what = describe_op(t)
        elif t.op == "task":
            ms = "; ".join(f"w={w:g} density={d:g} ranks=[{lo},{hi})"
                           for w, d, lo, hi in t.task["models"])
            what = (f"task({t.task['sparsify']}, consensus={t.task['consensus']}, "
                    f"normalize={t.task['normalize']}, rescale={t.task['rescale']}, "
                    f"lambda={t.task['lambda']:g}: {ms})")
        elif t.op == "della":
            ms = "; ".join(f"w={w:g} density={d:g} epsilon={e:g}" for w, d, e in t.task["models"])
            what = (f"della(consensus={t.task['consensus']}, normalize={t.task['normalize']}, "
                    f"rescale={t.task['rescale']}, lambda={t.task['lambda']:g}, rank groups of "
                    f"{t.task['group_len']}: {ms})")
        elif t.op == "sce":
            what = f"sce(select_topk={t.params['select_topk']:g})"
        elif t.op in ("slerp", "nearswap"):
            what = f"{t.op}(t={t.params['t']:g})"
        elif t.op == "nuslerp":
            vectors = ("columns" if t.params.get("columns") else
                       "rows" if t.params["rows"] else "tensor")
            what = f"nuslerp(t={t.params['t']:g}, {vectors})"
        elif t.op in SPHERE_METHODS:
            what = f"{t.op}({len(t.inputs)} inputs{', base' if t.params['has_base'] else ''})"
        elif t.op == "arcee_fusion":
            what = "arcee_fusion(median + 1.5·IQR of |δ|·KL)"
        else:
            what = "model_stock(filter_wise)" if t.params.get("rows") else "model_stock"
        lines.append(f"    {t.name} {t.dtype}{list(t.shape)} {what} "
                     f"-> {plan.shards[t.shard].file_name}@{t.offset}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Coefficients from streamed statistics (fp64 Gram matrices).

def _f32(x: float) -> float:
    """``x`` rounded to fp32 (to nearest, ties to even), as a Python float."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # rounds past the largest fp32: numpy's float32 gives inf too
        return math.copysign(math.inf, x)


def slerp_coefficients(t: float, gram: list[float], dot_threshold: float = 0.9995,
                       eps: float = 1e-8) -> tuple[float, float]:
    """(c0, c1) with ``out = c0·v0 + c1·v1``, from the Gram matrix of (v0, v1).

    ``dot = ⟨v0, v1⟩ / (‖v0‖‖v1‖)`` (a norm ≤ eps counts as 1), clamped to [−1, 1];
    if ``|dot| > dot_threshold`` the tensors are (anti)colinear and the result is
    the lerp ``(1 − t, t)`` (computed in fp32 as mergekit does); otherwise with
    ``θ = acos(dot)``: ``c0 = sin((1 − t)θ)/sin θ``, ``c1 = sin(tθ)/sin θ`` (fp64).
    """
    g00, g01, _, g11 = gram
    n0, n1 = math.sqrt(g00), math.sqrt(g11)
    n0 = n0 if n0 > eps else 1.0
    n1 = n1 if n1 > eps else 1.0
    dot = min(1.0, max(-1.0, g01 / (n0 * n1)))
    if abs(dot) > dot_threshold:
        t32 = _f32(t)
        return _f32(1.0 - t32), t32  # 1 - t32 is exact in fp64: rounding it once is fp32's
    theta = math.acos(dot)
    s = math.sin(theta)
    return math.sin((1 - t) * theta) / s, math.sin(t * theta) / s


def filter_rows(t: MethodTensor) -> tuple[int, int]:
    """(rows, row length) of per-row statistics (model stock's ``filter_wise``,
    nuslerp without flattening): mergekit's rows along the last dimension; a 0-D or
    1-D tensor is a single row."""
    cols = t.shape[-1] if len(t.shape) >= 2 else t.n_elems
    if cols == 0:
        return 1, 0
    return t.n_elems // cols, cols


_ROW_BATCH = 1 << 14  # filter_wise rows per Gram/sum run


def _row_batches(tensors: list[MethodTensor], max_bytes: int):
    """(tensor, first element, length) of every row (the whole tensor when its
    statistics are not per row), in batches of at most _ROW_BATCH rows whose input
    bytes stay within ``max_bytes`` (a batch holds at least one row). Rows shorter than
    a page stay mapped until _release_rows drops the batch's pages, so this bound, not
    the runners', is what keeps them within the memory budget."""
    batch, n_bytes = [], 0
    for t in tensors:
        rows, cols = filter_rows(t) if t.params.get("rows") else (1, t.n_elems)
        row_bytes = cols * sum(_core.dtype_n_bits(info.dtype) // 8 for info, _ in t.inputs)
        for r in range(rows):
            if batch and (len(batch) == _ROW_BATCH or n_bytes + row_bytes > max_bytes):
                yield batch
                batch, n_bytes = [], 0
            batch.append((t, r * cols, cols))
            n_bytes += row_bytes
    if batch:
        yield batch


def _model_stock_row_ratios(batch: list, grams: list) -> dict[int, float]:
    """Model stock's ratio of every model-stock row of a batch (by its index in the
    batch), computed per model count in one vectorised call."""
    by_n: dict[int, list[int]] = {}
    for row, (t, _, _) in enumerate(batch):
        if t.op == "model_stock":
            by_n.setdefault(len(t.inputs) - 1, []).append(row)
    ratios: dict[int, float] = {}
    for n, rows in by_n.items():
        ratios.update(zip(rows, model_stock_ratios([grams[r] for r in rows], n)))
    return ratios


def _release_rows(core_plan: Any, sources: dict, batch: list) -> None:
    """Drop the mapped input pages a batch of rows read: rows under a page are too
    small for the runs to release them, and the budget counts resident pages."""
    spans: dict[int, list] = {}
    for t, first, length in batch:
        span = spans.setdefault(id(t), [t, first, first + length])
        span[1], span[2] = min(span[1], first), max(span[2], first + length)
    for t, lo, hi in spans.values():
        for info, _ in t.inputs:
            size = _core.dtype_n_bits(info.dtype) // 8
            core_plan.release_source(sources[info.file], info.offset + lo * size,
                                     (hi - lo) * size)


def nuslerp_coefficients(t: float, gram: list[float], eps: float = 1e-8) -> tuple[float, float]:
    """mergekit's nuslerp as ``(c0, c1)`` with ``out = c0·v0 + c1·v1`` (fp64): norms
    clamped to at least 1e-7, ``θ = acos(clamp(cos, −1, 1))``, the lerp ``(1 − t, t)``
    when ``|sin θ| < eps``, else ``sin((1 − t)θ)/sin θ`` and ``sin(tθ)/sin θ``."""
    g00, g01, _, g11 = gram
    n0, n1 = max(math.sqrt(g00), 1e-7), max(math.sqrt(g11), 1e-7)
    theta = math.acos(min(1.0, max(-1.0, g01 / (n0 * n1))))
    s = math.sin(theta)
    if abs(s) < eps:
        return 1.0 - t, t
    return math.sin((1 - t) * theta) / s, math.sin(t * theta) / s


def model_stock_t(gram: list[float], n_models: int) -> float:
    """Model stock's interpolation ratio from the Gram matrix of the deltas.

    ``cos = mean_{i<j} clamp(⟨δ_i, δ_j⟩ / max(‖δ_i‖‖δ_j‖, 1e-6), −1, 1)``,
    ``t = N cos / (1 + (N − 1) cos)``; 0 when the denominator is below 1e-6.
    """
    g = [float(x) for x in gram]  # row-major n×n (plain floats: called once per row)
    cos = []
    for i in range(n_models):
        for j in range(i + 1, n_models):
            norm = math.sqrt(g[i * n_models + i]) * math.sqrt(g[j * n_models + j])
            cos.append(min(1.0, max(-1.0, g[i * n_models + j] / max(norm, 1e-6))))
    c = sum(cos) / len(cos)
    denominator = 1 + (n_models - 1) * c
    if abs(denominator) < 1e-6:
        return 0.0
    return n_models * c / denominator


def model_stock_ratios(grams: list[list[float]], n_models: int) -> list[float]:
    """:func:`model_stock_t` of many rows at once (filter_wise: ~10^5 rows per model),
    vectorised over the rows with the same fp64 operations in the same order, so every
    ratio has the same bits (NaN clamps to −1 as Python's ``max(-1.0, nan)`` does)."""
    import numpy as np

    g = np.asarray(grams, dtype=np.float64).reshape(len(grams), n_models * n_models)
    with np.errstate(all="ignore"):  # inf/NaN sums give what the scalar formula gives
        norms = np.sqrt(g[:, ::n_models + 1])  # the diagonal: ‖δ_i‖
        total = np.zeros(len(grams))
        for i in range(n_models):
            for j in range(i + 1, n_models):
                norm = norms[:, i] * norms[:, j]
                x = g[:, i * n_models + j] / np.where(1e-6 > norm, 1e-6, norm)
                x = np.where(x > -1.0, x, -1.0)  # max(-1.0, x)
                total = total + np.where(x < 1.0, x, 1.0)  # min(1.0, x)
        c = total / (n_models * (n_models - 1) // 2)
        denominator = 1 + (n_models - 1) * c
        ratio = np.where(np.abs(denominator) < 1e-6, 0.0, n_models * c / denominator)
    return ratio.tolist()


# ---------------------------------------------------------------------------
# Running.

def merge_models(method: str, models: Sequence[CheckpointLike], out: PathLike, *,
                 base_model: CheckpointLike | None = None,
                 parameters: dict[str, Any] | None = None,
                 model_parameters: Sequence[dict[str, Any]] | None = None,
                 seed: int = 0, dtype: str | None = None, rescale_mode: str = "l1",
                 max_shard_size: int | str = "5GB", include: str | list[str] | None = None,
                 exclude: str | list[str] | None = None, threads: int = 0,
                 memory_budget: int | str = "256MiB", chunk_elems: int = 0,
                 check_finite: bool = False, overwrite: bool = False, progress: bool = True,
                 dry_run: bool = False, kernel: str = "auto",
                 extra_files: list[Path] | None = None,
                 chat_template: str | None = None, int_policy: str = "first",
                 finish: Any = None, resume: bool = False,
                 distributed: bool | None = None, device: str = "cpu") -> MergeReport:
    """Merge ``models`` (and ``base_model``) with ``method``, streamed.

    Args:
        method: one of :data:`METHODS` (``ties``, ``dare_ties``, ``slerp``, ...).
        models: the fine-tuned models (a model equal to ``base_model`` is skipped):
            paths (safetensors, ``.pt``/``.bin``), Checkpoints, live ``nn.Module``s,
            dicts of tensors or TensorSets, read in place (in-memory inputs cannot
            ``resume`` or run ``distributed``).
        out: ``*.safetensors`` for one file, otherwise a directory (HF layout).
        base_model: the base θ_b (required by every method but ``linear``).
        parameters: method-wide settings (``normalize``, ``lambda``, ``t``, and
            defaults of per-model ones), each a number, gradient or conditions.
        model_parameters: per model: ``weight``, ``density``, ``gamma``, ``epsilon``.
        seed: DARE's and DELLA's RNG seed; the draw for an element depends only on (seed,
            tensor name, model index, element index).
        dtype: output dtype of float tensors (default: the base's dtype).
        rescale_mode: what ``rescale: true`` means: ``"l1"`` (mergekit: match the
            delta's L1 norm) or ``"density"`` (the DARE paper: divide by density;
            random sparsification only).
        extra_files: files copied into a directory output (default: the non-weight
            files of the base, or of the first model).
        chat_template: Jinja template text written to ``chat_template.jinja`` (and
            into ``tokenizer_config.json`` when present).
        int_policy: integer/bool tensors: ``"first"`` (default: the base's, or the
            first model's for ``linear``), ``"max"`` (elementwise over all inputs) or
            ``"error"`` (all inputs must hold the same values).
        finish: called with the :class:`~ladle.engine.output.OutputDir` once the shards
            and extra files are in its partial directory (writes further files).
        resume: keep the finished shards of an interrupted run of the same merge.
        distributed: split the output shards across ``torch.distributed`` ranks
            (None: when launched with WORLD_SIZE > 1); byte-identical output.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``: task-vector programs,
            Gram reductions and weighted sums run on the GPU (nearswap stays on the
            CPU engine); the output is bit-identical. Raises
            :class:`~ladle.BackendError` before anything is written when CUDA is
            unusable.
        Other options are those of :func:`ladle.merge`.

    Returns:
        A :class:`~ladle.MergeReport`.

    Example:
        >>> ladle.methods.methods.merge_models("slerp", ["b/"], "out/", base_model="a/",
        ...                            parameters={"t": [0, 0.5, 1]})   # doctest: +SKIP
    """
    threads, budget, shard_bytes = engine_options(threads, memory_budget, max_shard_size)
    kernel = parse_kind(Kernel, kernel, "kernel").value  # before any input is opened
    _check_device(device, kernel, dry_run)
    if rescale_mode not in ("l1", "density"):
        raise LadleValueError(f"rescale_mode must be 'l1' or 'density', got {rescale_mode!r}")
    model_list = list(models)  # once: `models` may be an iterator
    donors = [f.parent for f in extra_files or []]  # e.g. a recipe's tokenizer_source
    output = checked_output(out, [base_model, *model_list, *(extra_files or []), *donors],
                            overwrite=overwrite)  # before reading inputs
    opened = open_inputs([*([base_model] if base_model is not None else []), *model_list])
    base = opened.pop(0) if base_model is not None else None
    if method in ("linear", "passthrough"):  # no base: every listed model is an input
        base = None
    params_list = (list(model_parameters) if model_parameters is not None
                   else [{}] * len(model_list))
    if len(params_list) != len(model_list):
        raise LadleValueError(f"{method}: got {len(params_list)} parameter set(s) for "
                              f"{len(model_list)} model(s)")
    ckpts = opened
    refuse_memory_inputs(([base] if base is not None else []) + ckpts, resume=resume,
                         distributed=wanted(distributed))
    if base is not None:  # a base listed among the models contributes as the base only
        keep = [k for k, c in enumerate(ckpts) if not same_input(c, base)]
        ckpts = [ckpts[k] for k in keep]
        params_list = [params_list[k] for k in keep]
    if rescale_mode == "density" and METHODS.get(method, METHODS["linear"]).sparsify not in (
            "random", "magprune", "none"):
        raise LadleValueError(f"{method}: rescale_mode='density' applies to DARE and DELLA only")
    inputs = ([str(base.path)] if base is not None else []) + [str(c.path) for c in ckpts]
    metadata = {
        "ladle_method": method,
        "ladle_inputs": json.dumps(inputs),
        "ladle_parameters": json.dumps({"parameters": parameters or {},
                                        "models": params_list, "seed": seed}, default=str),
        "ladle_int_policy": check_int_policy(int_policy),
        "ladle_version": _core.build_info()["version"],
    }
    plan = build_method_plan(method, base, ckpts, parameters=parameters,
                             model_parameters=params_list, dtype=dtype, include=include,
                             exclude=exclude, max_shard_bytes=shard_bytes,
                             single_file=output.single_file, rescale_mode=rescale_mode,
                             metadata=metadata, int_policy=int_policy)
    all_ckpts = ([base] if base is not None else []) + ckpts
    return write_method_plan(plan, all_ckpts, output,
                             extra_files if extra_files is not None
                             else all_ckpts[0].extra_files,
                             chat_template=chat_template, finish=finish, dry_run=dry_run,
                             seed=seed,
                             threads=threads, memory_budget=budget,
                             chunk_elems=chunk_elems, check_finite=check_finite,
                             progress=progress, kernel=kernel, resume=resume,
                             distributed=distributed, device=device)


def write_method_plan(plan: MethodPlan, ckpts: list[Checkpoint], output: OutputDir,
                      extra_files: list[Path], *, chat_template: str | None = None,
                      finish: Any = None, dry_run: bool = False, seed: int = 0,
                      threads: int = 0, memory_budget: int | str = "256MiB",
                      chunk_elems: int = 0, check_finite: bool = False, progress: bool = True,
                      kernel: str = "auto", resume: bool = False,
                      distributed: bool | None = None, device: str = "cpu") -> MergeReport:
    """Run ``plan`` over the files of ``ckpts`` into ``output``, atomically: shards,
    index, ``extra_files``, the chat template, then ``finish(output)`` (a hook that
    writes further files into the partial directory, e.g. a rewritten config).

    ``resume`` keeps the finished shards of an interrupted run of the same plan;
    ``distributed`` splits the shards across ranks as :func:`ladle.merge` does;
    ``device`` picks the backend (:class:`~ladle.methods.method_engine.MethodEngine`)."""
    threads, budget, _ = engine_options(threads, memory_budget)
    _check_device(device, kernel, dry_run)  # slices recipes come here directly
    if dry_run:
        output.check_destination()
        print(describe_method_plan(plan))
        return MergeReport(None, len(plan.tensors), len(plan.shards), plan.bytes_read,
                           plan.bytes_written, 0.0)
    t0 = time.perf_counter()
    identity = method_plan_hash(plan, ckpts, seed)  # before the run sets SLERP's weights
    engine = {"seed": seed, "threads": threads, "memory_budget": budget,
              "chunk_elems": chunk_elems, "check_finite": check_finite, "progress": progress,
              "kernel": kernel, "device": device}

    def complete(output: OutputDir) -> None:
        if plan.sharded:
            output.write_index({t.name: plan.shards[t.shard].file_name for t in plan.tensors},
                               sum(t.n_bytes for t in plan.tensors))
        output.copy_extra_files(extra_files)
        if finish is not None:
            finish(output)
        if chat_template is not None:
            _write_chat_template(output, chat_template)

    if wanted(distributed):
        engine["progress"] = progress and os.environ.get("RANK", "0") == "0"
        engine["device"] = rank_device(device)

        def run(plan: MethodPlan, ckpts: list[Checkpoint], view: OutputDir,
                only: list[int]) -> dict:
            return execute_method_plan(plan, ckpts, view, only=only, **engine)

        r = run_merge(plan, ckpts, output, plan_hash=identity, resume=resume, execute=run,
                      finish=complete)
        return MergeReport(r["dest"], len(plan.tensors), len(plan.shards), r["bytes_read"],
                           plan.bytes_written, r["seconds"], r["threads"], r["chunk_elems"],
                           r["kernel"], None, r["world_size"], r["rank_bytes_read"])

    def work(output: OutputDir) -> dict:
        stats = execute_method_plan(plan, ckpts, output, **engine)
        complete(output)
        return stats

    stats, dest = write_atomically(output, work, plan_hash=identity, resume=resume)
    return MergeReport(dest, len(plan.tensors), len(plan.shards), stats["bytes_read"],
                       plan.bytes_written, time.perf_counter() - t0, stats["threads"],
                       stats["chunk_elems"], stats["kernel"], None,
                       ranks_sampled=stats["ranks_sampled"],
                       ranks_histogrammed=stats["ranks_histogrammed"])


def method_plan_hash(plan: MethodPlan, ckpts: list[Checkpoint], seed: int) -> str:
    """Identity of a method run for resume and for the ranks to agree on: the
    shard headers and input files (:func:`ladle.methods.merge.plan_hash`) and every
    tensor's recipe (op, inputs, weights, parameters, task settings, seed), which
    the headers of a ``slices:`` recipe do not all record."""
    h = hashlib.sha256(plan_hash(plan, ckpts).encode())
    h.update(f"{plan.method}\0{seed}\0".encode())
    for t in plan.tensors:
        inputs = [[str(i.file), i.offset, i.dtype, w] for i, w in t.inputs]
        h.update(json.dumps([t.name, t.op, inputs, t.params, t.task], sort_keys=True,
                            default=str).encode() + b"\0")
    return h.hexdigest()


def _write_chat_template(output: OutputDir, template: str) -> None:
    if output.single_file:
        raise LadleValueError("chat_template needs a directory output")
    (output.partial / "chat_template.jinja").write_text(template)
    config = output.partial / "tokenizer_config.json"
    if config.exists():
        data = json.loads(config.read_text())
        data["chat_template"] = template
        config.write_text(json.dumps(data, indent=2) + "\n")


@bulk_objects()
def execute_method_plan(plan: MethodPlan, ckpts: list[Checkpoint], output: OutputDir, *,
                        seed: int, threads: int, memory_budget: int, chunk_elems: int,
                        check_finite: bool, progress: bool, kernel: str, device: str = "cpu",
                        only: list[int] | None = None) -> dict:
    """Run a MethodPlan into the shards of ``output``'s partial directory, one
    shard at a time; each finished shard is fsynced and recorded for resume.
    Shards already in ``output.finished`` (a resumed run) are skipped, and so are
    those not in ``only`` (the shards of one rank of a distributed run) when given.

    Order within a shard: Gram reductions (SLERP, model stock) → coefficients in
    Python → weighted sums and copies on the linear engine → task-vector jobs.
    A tensor's statistics are computed by the run that writes its shard.
    """
    run = open_shard_sinks(plan.shards, ckpts, output, only)
    todo, core_plan, sources, sinks = run.todo, run.core_plan, run.sources, run.sinks
    by_shard: dict[int, list[MethodTensor]] = run.by_shard(plan.tensors)
    engine = MethodEngine(device, threads=threads, memory_budget=memory_budget,
                          chunk_elems=chunk_elems, kernel=kernel)
    bar = _progress_bar(sum(plan.shards[i].n_bytes for i in todo), progress)

    finished = [0]  # bytes of the runs already done: the bar counts across all runs

    def on_progress(done, total):
        if bar is not None:
            bar.total = finished[0] + total
            bar.update(finished[0] + done - bar.n)

    item_bytes: dict[str, int] = {}  # src runs once per input of every filter_wise row

    def src(info: TensorInfo, elem: int = 0) -> tuple[int, int, str]:
        """(source, byte offset, dtype) of element ``elem`` of ``info``."""
        size = item_bytes.get(info.dtype)
        if size is None:
            size = item_bytes[info.dtype] = _core.dtype_n_bits(info.dtype) // 8
        return sources[info.file], info.offset + elem * size, info.dtype

    totals = {"bytes_read": 0, "threads": 0, "chunk_elems": 0, "kernel": "",
              "ranks_sampled": 0, "ranks_histogrammed": 0}

    def add(stats: dict) -> None:
        finished[0] = bar.n if bar is not None else 0
        for key in ("bytes_read", "ranks_sampled", "ranks_histogrammed"):
            totals[key] += stats.get(key, 0)
        for key in ("threads", "chunk_elems", "kernel"):
            totals[key] = stats[key] or totals[key]

    try:
        for i in todo:
            _run_shard(core_plan, plan.shards[i], sinks[i], by_shard[i], src, sources, seed,
                       check_finite, on_progress, add, engine)
            output.record_shard(plan.shards[i].file_name, core_plan.finish_sink(sinks[i]))
    finally:
        if bar is not None:
            bar.close()
    return totals


def _run_shard(core_plan: Any, shard: Shard, sink: int, tensors: list[MethodTensor],
               src: Any, sources: dict, seed: int, check_finite: bool, on_progress: Any,
               add: Any, engine: MethodEngine) -> None:
    """The engine passes of one output shard (see execute_method_plan), each the run of
    one or two job kinds of ``core_plan``; job kinds the engine's device does not run
    run on the CPU."""
    run_opts = engine.cpu_options  # the runners with no device implementation

    def inp(info: TensorInfo, elem: int = 0, weight: float = 1.0) -> Any:
        return _core.Input(*src(info, elem), weight)

    def run(kinds: Sequence[JobKind], check: bool = check_finite) -> dict:
        """The plan's jobs of ``kinds`` on the device, or on the CPU for kinds it lacks."""
        on_device = [k for k in kinds if engine.supports(k)]
        on_cpu = [k for k in kinds if not engine.supports(k)]
        out: dict = {}
        for chosen, runner in ((on_device, engine.run), (on_cpu, engine.run_on_cpu)):
            if any(core_plan.count(k) for k in core_kinds(chosen)):
                out = runner(core_plan, chosen, check_finite=check, progress=on_progress)
                add(out)
        return out

    core_plan.clear_jobs()
    staged = [t for t in tensors if (t.op == "nuslerp" and not t.params["columns"])
              or t.op in SPHERE_METHODS or t.params.get("rows")]
    gram_tensors = [t for t in tensors if t.op in ("slerp", "model_stock")
                    and not t.params.get("rows")]
    if gram_tensors:
        for t in gram_tensors:
            core_plan.add_gram(t.name, t.n_elems, [inp(i) for i, _ in t.inputs],
                               0 if t.op == "model_stock" else -1)
        grams = run([JobKind.GRAM], check=False)["grams"]
        core_plan.clear_jobs()
        for t, gram in zip(gram_tensors, grams):
            infos = [i for i, _ in t.inputs]
            if t.op == "slerp":
                c0, c1 = slerp_coefficients(t.params["t"], gram)
                t.inputs = [(infos[0], c0), (infos[1], c1)]
            else:
                n = len(infos) - 1
                ratio = model_stock_t(gram, n)
                t.params["model_stock_t"] = ratio
                t.inputs = [(infos[0], 1.0 - ratio)] + [(i, ratio / n) for i in infos[1:]]
    # Plain jobs (sum, copy, max, nearswap) on the engine's device.
    plain = [t for t in tensors if t.op not in ("task", "della", "sce", "nuslerp", "arcee_fusion",
                                                *SPHERE_METHODS) and not t.params.get("rows")]
    for t in plain:
        op = t.op if t.op in ("copy", "max", "nearswap") else "sum"
        out_offset = len(shard.header) + t.offset
        dtype, n_elems = t.dtype, t.n_elems
        if op == "copy" and _core.dtype_n_bits(dtype) % 8:
            dtype, n_elems = "U8", t.n_bytes
        inputs = [_core.Input(sources[i.file], i.offset, dtype if op == "copy" else i.dtype, w)
                  for i, w in t.inputs]
        core_plan.add_job(t.name, core_enum(_core.JobKind, op, "job op"), n_elems, sink,
                          out_offset, dtype, inputs,
                          threshold=t.params["t"] if op == "nearswap" else 0.0)
    run(ENGINE_KINDS)
    for batch in _row_batches(staged, run_opts["memory_budget"] // 2):
        # Per-row model stock and nuslerp: a Gram job per row (or tensor), then its
        # weighted sum or base + task vector, a bounded number of rows at a time so
        # the jobs and statistics held stay small.
        core_plan.clear_jobs()
        for t, first, length in batch:
            has_base = t.op == "model_stock" or t.params["has_base"]
            core_plan.add_gram(t.name, length, [inp(i, first) for i, _ in t.inputs],
                               0 if has_base else -1)
        grams = run([JobKind.GRAM], check=False)["grams"]
        core_plan.clear_jobs()
        ratios = _model_stock_row_ratios(batch, grams)
        for row, ((t, first, length), gram) in enumerate(zip(batch, grams)):
            infos = [i for i, _ in t.inputs]
            out_offset = len(shard.header) + t.offset + first * _ITEM_BYTES[t.dtype]
            if t.op == "model_stock":
                n = len(infos) - 1
                ratio = ratios[row]
                weights = [1.0 - ratio] + [ratio / n] * n
            elif t.params["has_base"]:  # base + (c0·δ0 + c1·δ1 …) on the task program
                coefficients = (nuslerp_coefficients(t.params["t"], gram) if t.op == "nuslerp"
                                else sphere_coefficients(t, gram))
                core_plan.add_task(t.name, length, sink, out_offset, t.dtype, inp(infos[0], first),
                                   [_core.TaskModel(inp(i, first, c), 1.0, 0, length)
                                    for i, c in zip(infos[1:], coefficients)],
                                   _core.Sparsify.none, _core.Consensus.none, False,
                                   _core.Rescale.none, 1.0, seed)
                continue
            elif t.op == "nuslerp":
                weights = list(nuslerp_coefficients(t.params["t"], gram))
            else:
                weights = sphere_coefficients(t, gram)
            core_plan.add_job(t.name, _core.JobKind.sum, length, sink, out_offset, t.dtype,
                              [inp(i, first, w) for i, w in zip(infos, weights)])
        run([JobKind.SUM])
        run([JobKind.TASK])
        _release_rows(core_plan, sources, batch)
    for t in tensors:  # streamed by blocks of rows (ladle.engine.row_stream; numpy)
        if t.op == "arcee_fusion":
            from .fusion import run_fusion as blocked
        elif t.params.get("columns"):
            from .nuslerp_columns import run_nuslerp_columns as blocked
        else:
            continue
        core_plan.clear_jobs()
        add(blocked(core_plan, sources, t, sink, len(shard.header) + t.offset, run_opts))
    core_plan.clear_jobs()
    for t in tensors:
        if t.op == "della":
            spec = t.task
            core_plan.add_della(
                t.name, t.n_elems, spec["group_len"], spec["group_stride"], sink,
                len(shard.header) + t.offset, t.dtype, inp(t.inputs[0][0]),
                [_core.DellaModel(inp(info, 0, w), d, e)
                 for (info, _), (w, d, e) in zip(t.inputs[1:], spec["models"])],
                spec["consensus"] == "sum", spec["normalize"],
                core_enum(_core.DellaRescale, spec["rescale"], "della rescale"), spec["lambda"],
                seed)
        elif t.op == "sce":
            core_plan.add_sce(t.name, t.n_elems, sink, len(shard.header) + t.offset, t.dtype,
                              inp(t.inputs[0][0]), [inp(i) for i, _ in t.inputs[1:]],
                              t.params["select_topk"])
        elif t.op == "task":
            spec = t.task
            models = [_core.TaskModel(inp(info, 0, w), d, lo, hi)
                      for (info, _), (w, d, lo, hi) in zip(t.inputs[1:], spec["models"])]
            core_plan.add_task(
                t.name, t.n_elems, sink, len(shard.header) + t.offset, t.dtype,
                inp(t.inputs[0][0]), models,
                core_enum(_core.Sparsify, spec["sparsify"], "sparsification"),
                core_enum(_core.Consensus, spec["consensus"], "consensus"), spec["normalize"],
                core_enum(_core.Rescale, spec["rescale"], "rescale"), spec["lambda"], seed)
    run([JobKind.DELLA])
    run([JobKind.SCE])
    run([JobKind.TASK])


# ---------------------------------------------------------------------------
# Convenience wrappers.

def task_arithmetic(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
                    weights: Sequence[float], lambda_: float = 1.0, **options) -> MergeReport:
    """``θ_b + λ Σ_k w_k (θ_k − θ_b)`` (Ilharco et al. 2023, "Editing models with task
    arithmetic"). Options are those of :func:`merge_models`."""
    return merge_models("task_arithmetic", models, out, base_model=base,
                        parameters={"lambda": lambda_},
                        model_parameters=[{"weight": w} for w in weights], **options)


def ties(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
         weights: Sequence[float], density: float | Sequence[float] = 0.2,
         normalize: bool = True, lambda_: float = 1.0, **options) -> MergeReport:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge."""
    densities = _per_model(density, len(weights))
    return merge_models("ties", models, out, base_model=base,
                        parameters={"normalize": normalize, "lambda": lambda_},
                        model_parameters=[{"weight": w, "density": d}
                                          for w, d in zip(weights, densities)], **options)


def dare(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
         weights: Sequence[float], density: float | Sequence[float] = 0.5,
         variant: str = "linear", seed: int = 0, rescale: bool = True,
         rescale_mode: str = "l1", lambda_: float = 1.0, **options) -> MergeReport:
    """DARE (Yu et al. 2024, "Language models are Super Mario"): drop deltas at random
    and rescale; ``variant`` ``"linear"`` sums them, ``"ties"`` elects signs."""
    if variant not in ("linear", "ties"):
        raise LadleValueError(f"DARE variant must be 'linear' or 'ties', got {variant!r}")
    densities = _per_model(density, len(weights))
    return merge_models(f"dare_{variant}", models, out, base_model=base, seed=seed,
                        rescale_mode=rescale_mode,
                        parameters={"rescale": rescale, "lambda": lambda_},
                        model_parameters=[{"weight": w, "density": d}
                                          for w, d in zip(weights, densities)], **options)


def breadcrumbs(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
                weights: Sequence[float], density: float = 0.9, gamma: float = 0.01,
                ties: bool = False, **options) -> MergeReport:
    """Model Breadcrumbs (Davari & Belilovsky 2024): drop the top ``gamma`` outliers
    and the smallest magnitudes, keeping ``density`` of each delta."""
    return merge_models("breadcrumbs_ties" if ties else "breadcrumbs", models, out,
                        base_model=base,
                        model_parameters=[{"weight": w, "density": density, "gamma": gamma}
                                          for w in weights], **options)


def della(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
          weights: Sequence[float], density: float | Sequence[float] = 0.5,
          epsilon: float = 0.15, linear: bool = False, seed: int = 0,
          lambda_: float = 1.0, **options) -> MergeReport:
    """DELLA (Deep et al. 2024): MAGPRUNE drops each delta element with a probability
    that falls with its magnitude rank in its row (keep ``density ± epsilon``), then
    sign election (or, ``linear=True``, a plain weighted sum as ``della_linear``)."""
    densities = _per_model(density, len(weights))
    return merge_models("della_linear" if linear else "della", models, out, base_model=base,
                        seed=seed, parameters={"lambda": lambda_, "epsilon": epsilon},
                        model_parameters=[{"weight": w, "density": d}
                                          for w, d in zip(weights, densities)], **options)


def sce(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike, *,
        select_topk: Any = 1.0, **options) -> MergeReport:
    """SCE (Wan et al. 2024, FuseChat): keep the ``select_topk`` share of elements whose
    deltas vary most across the models, weight each model by its kept deltas' mean
    square, erase deltas against the elected sign, average the rest."""
    return merge_models("sce", models, out, base_model=base,
                        parameters={"select_topk": select_topk}, **options)


def slerp(base: CheckpointLike, other: CheckpointLike, t: Any, out: PathLike,
          **options) -> MergeReport:
    """Spherical linear interpolation per tensor from ``base`` (t = 0) to ``other``
    (t = 1); ``t`` may be a gradient or filtered conditions."""
    return merge_models("slerp", [other], out, base_model=base, parameters={"t": t}, **options)


def nuslerp(models: Sequence[CheckpointLike], out: PathLike, *, weights: Sequence[float],
            base: CheckpointLike | None = None, flatten: bool = True,
            row_wise: bool = False, **options) -> MergeReport:
    """mergekit's NuSLERP: SLERP of two models (or of their deltas from ``base``) at
    ``t = w_2 / (w_1 + w_2)``, per tensor or, with ``flatten=False``, per row (per
    column, the vectors along dimension 0, with ``row_wise=True`` too)."""
    return merge_models("nuslerp", models, out, base_model=base,
                        parameters={"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise},
                        model_parameters=[{"weight": w} for w in weights], **options)


def nearswap(base: CheckpointLike, other: CheckpointLike, t: Any, out: PathLike,
             **options) -> MergeReport:
    """mergekit's NearSwap: per element, move from ``base`` toward ``other`` by
    ``clamp(t / |base − other|, 0, 1)``; ``t`` may be a gradient or conditions."""
    return merge_models("nearswap", [other], out, base_model=base, parameters={"t": t},
                        **options)


def multislerp(models: Sequence[CheckpointLike], out: PathLike, *, weights: Sequence[Any],
               base: CheckpointLike | None = None, normalize_weights: bool = True,
               eps: float = 1e-8, **options) -> MergeReport:
    """mergekit's multislerp: weighted spherical mean of the models (or of their
    deltas from ``base``, then added to it), per tensor (:mod:`ladle.methods.sphere`)."""
    return merge_models("multislerp", models, out, base_model=base,
                        parameters={"normalize_weights": normalize_weights, "eps": eps},
                        model_parameters=[{"weight": w} for w in weights], **options)


def karcher(models: Sequence[CheckpointLike], out: PathLike, *, max_iter: int = 10,
            tol: float = 1e-5, base: CheckpointLike | None = None,
            **options) -> MergeReport:
    """mergekit's Karcher mean: the Riemannian mean on the sphere of the models (and
    ``base`` as one more point), equally weighted, per tensor (:mod:`ladle.methods.sphere`)."""
    return merge_models("karcher", models, out, base_model=base,
                        parameters={"max_iter": max_iter, "tol": tol}, **options)


def arcee_fusion(base: CheckpointLike, other: CheckpointLike, out: PathLike,
                 **options) -> MergeReport:
    """mergekit's Arcee fusion: ``base`` plus the delta of ``other`` where its
    KL-weighted importance exceeds the tensor's median + 1.5·IQR (:mod:`ladle.methods.fusion`)."""
    return merge_models("arcee_fusion", [other], out, base_model=base, **options)


def model_stock(base: CheckpointLike, models: Sequence[CheckpointLike], out: PathLike,
                **options) -> MergeReport:
    """Model Stock (Jang et al. 2024): interpolate the fine-tunes' mean toward the base
    by a ratio from the deltas' mean pairwise cosine."""
    return merge_models("model_stock", models, out, base_model=base, **options)


def _per_model(value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = list(value)
    if len(values) != n:
        raise LadleValueError(f"got {len(values)} densities for {n} model(s)")
    return values
