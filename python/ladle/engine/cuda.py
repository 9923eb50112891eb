"""The optional CUDA backend: what is available, device strings, and weighted
sums of tensors already on the GPU.

``ladle._cuda`` is a separate extension module (CUDA runtime linked
statically) imported only here and only on first use, so ``import ladle``
works on machines without CUDA, a driver or a GPU. Nothing here imports torch:
tensors are read through ``data_ptr()``, ``numel()``, ``dtype`` and ``device``.

Example:
    >>> import ladle
    >>> ladle.cuda_available()   # doctest: +SKIP
    False
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ..errors import BackendError, LadleValueError

#: Device string that runs the CUDA engine's host code and kernel code on the
#: CPU (host memory, serial). For tests on machines without a GPU; slow.
EMULATOR = "cuda-emulator"

_TORCH_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
                 "torch.float64": "F64"}

_module_cache: list[ModuleType | None] = []
_import_error: list[str] = []


def _module() -> ModuleType | None:
    """``ladle._cuda`` or None when it was not built or cannot be loaded."""
    if not _module_cache:
        try:
            _module_cache.append(importlib.import_module("ladle._cuda"))
        except ImportError as e:
            _module_cache.append(None)
            _import_error.append(str(e))
    return _module_cache[0]


def cuda_info() -> dict[str, Any]:
    """What was compiled and what the CUDA runtime reports now.

    Returns:
        ``compiled`` (the CUDA module was built and loads), ``archs``,
        ``runtime_version``, ``driver_version``, ``device_count``, ``devices``
        (name, compute capability, memory) and ``error`` (why CUDA is unusable,
        or "").
    """
    mod = _module()
    if mod is None:
        from .. import _core

        why = ("ladle was built without the CUDA backend (LADLE_CUDA=OFF or no nvcc)"
               if not _core.build_info()["cuda_compiled"]
               else f"ladle._cuda cannot be imported: {_import_error[0]}")
        return {"compiled": False, "archs": "", "runtime_version": 0, "driver_version": 0,
                "device_count": 0, "devices": [], "error": why}
    status = mod.status()
    info = {"compiled": True, "archs": mod.build_info()["archs"], **status}
    info["devices"] = [mod.device_props(i) for i in range(status["device_count"])]
    return info


def cuda_available() -> bool:
    """True when the CUDA backend was compiled and a CUDA device is usable now.

    Never raises: a missing module, driver or device all give False
    (:func:`cuda_info` says which).
    """
    mod = _module()
    return mod is not None and mod.status()["device_count"] > 0


def parse_device(device: str) -> tuple[str, int]:
    """Split ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"cuda-emulator"`` into
    (backend, index) with backend one of ``cpu``, ``cuda``, ``emulator``."""
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == EMULATOR:
        return "emulator", 0
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise LadleValueError(f"unknown device {device!r} (cpu, cuda, cuda:N)")


def rank_device(device: str) -> str:
    """``device`` for this process of a distributed run: plain ``"cuda"`` becomes
    ``"cuda:LOCAL_RANK"`` (one GPU per local rank); anything else is kept."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def require(device: str = "cuda") -> tuple[ModuleType, int, bool]:
    """The CUDA module, device index and emulation flag for ``device``.

    Raises:
        BackendError: the backend was not compiled, or no usable device (the
            message says why: no driver, no device, index out of range).
    """
    backend, index = parse_device(device)
    if backend == "cpu":
        raise LadleValueError("require() needs a CUDA device string")
    mod = _module()
    if mod is None:
        raise BackendError(f"device {device!r} requested but {cuda_info()['error']}")
    if backend == "emulator":
        return mod, 0, True
    status = mod.status()
    if status["device_count"] == 0:
        raise BackendError(f"device {device!r} requested but CUDA is not available: "
                           f"{status['error']}")
    if index >= status["device_count"]:
        raise BackendError(f"device {device!r} requested but only {status['device_count']} "
                           f"CUDA device(s) exist")
    return mod, index, False


def _tensor_spec(t: Any, what: str, emulate: bool) -> tuple[int, str, int, int]:
    """(address, dtype, numel, device index) of a contiguous torch tensor."""
    dtype = _TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise LadleValueError(f"{what}: dtype {t.dtype} cannot be merged (float32, float16, "
                              "bfloat16, float64)")
    if not t.is_contiguous():
        raise LadleValueError(f"{what}: tensor must be contiguous")
    if emulate:
        if t.device.type != "cpu":
            raise LadleValueError(f"{what}: the emulator needs CPU tensors, got {t.device}")
        index = 0
    else:
        if t.device.type != "cuda":
            raise LadleValueError(f"{what}: expected a CUDA tensor, got one on {t.device}")
        index = t.device.index or 0
    return t.data_ptr(), dtype, t.numel(), index


class DeviceSum:
    """Weighted sums ``out_i = Σ_k w_k · x_k,i`` over tensors that stay on the
    GPU, for every tensor i with ONE kernel launch per call.

    Built once from output tensors and K lists of inputs (same names/order,
    same element counts); each call then only launches the kernel on torch's
    current stream (asynchronous, like any torch op). Results are bit-identical
    to ladle's CPU engine (fp32 accumulation in input order, no FMA,
    round-to-nearest-even). The tensors must outlive this object.

    Args:
        outputs: name -> tensor (e.g. a live model's ``named_parameters``), or
            a sequence of tensors. Outputs may be the inputs themselves.
        *inputs: K mappings (or sequences) of input tensors, e.g. θ0 and θ1.
        emulate: run on CPU tensors through the host emulator (tests only).

    Example:
        >>> theta = dict(model.named_parameters())          # doctest: +SKIP
        >>> wise = DeviceSum({n: p.data for n, p in theta.items()}, theta0, theta1)
        >>> for alpha in [i / 20 for i in range(21)]:
        ...     wise.interpolate(alpha); evaluate(model)
    """

    def __init__(self, outputs: Mapping[str, Any] | Sequence[Any],
                 *inputs: Mapping[str, Any] | Sequence[Any], emulate: bool = False) -> None:
        if not inputs:
            raise LadleValueError("DeviceSum needs at least one input set")
        names, outs = _named(outputs)
        in_lists = []
        for k, group in enumerate(inputs):
            in_names, tensors = _named(group)
            if in_names != names:
                missing = sorted(set(names) ^ set(in_names))[:3]
                raise LadleValueError(f"input set {k} does not match the outputs' tensor names "
                                      f"(first differences: {missing})")
            in_lists.append(tensors)
        mod, _, _ = require(EMULATOR if emulate else "cuda")
        specs = []
        device = None
        for i, name in enumerate(names):
            address, dtype, n, index = _tensor_spec(outs[i], f"output '{name}'", emulate)
            device = index if device is None else device
            ins = []
            for k, tensors in enumerate(in_lists):
                a, d, m, j = _tensor_spec(tensors[i], f"input {k} '{name}'", emulate)
                if m != n:
                    raise LadleValueError(f"input {k} '{name}': {m} elements, output has {n}")
                if j != device or index != device:
                    raise LadleValueError(f"'{name}': tensors on different CUDA devices "
                                          f"({j}, {index}, {device})")
                ins.append((a, d))
            specs.append((name, address, dtype, n, ins))
        self._emulate = emulate
        self._device = device or 0
        self._impl = mod.DeviceSum(self._device, specs, emulate=emulate)
        self._keep = (outputs, inputs)  # the tensors must outlive the launches

    @property
    def n_inputs(self) -> int:
        """Number of input sets (K)."""
        return self._impl.n_inputs

    def __call__(self, weights: Sequence[float], post_scale: float = 1.0,
                 stream: int | None = None) -> None:
        """Enqueue ``out = post_scale · Σ_k weights[k] · inputs[k]`` for every tensor.

        Args:
            weights: one weight per input set, rounded to fp32; 0 skips the set.
            post_scale: multiplies the sum (1 skips the multiplication).
            stream: a ``cudaStream_t`` as int; default torch's current stream.
        """
        if stream is None:
            stream = 0 if self._emulate else _current_stream(self._device)
        self._impl.run([float(w) for w in weights], float(post_scale), int(stream))

    def interpolate(self, alpha: float, stream: int | None = None) -> None:
        """WiSE-FT: ``θα = (1 − α)·θ0 + α·θ1`` (needs exactly two input sets)."""
        if self.n_inputs != 2:
            raise LadleValueError(f"interpolate needs 2 input sets, this DeviceSum has "
                                  f"{self.n_inputs}")
        alpha = float(alpha)
        self([1.0 - alpha, alpha], stream=stream)


def _named(group: Mapping[str, Any] | Sequence[Any]) -> tuple[list[str], list[Any]]:
    if isinstance(group, Mapping):
        return list(group.keys()), list(group.values())
    return [str(i) for i in range(len(group))], list(group)


def _current_stream(device: int) -> int:
    import torch  # the caller passed torch tensors, so torch is importable

    return int(torch.cuda.current_stream(device).cuda_stream)


def weighted_sum_(out: Any, inputs: Sequence[Any], weights: Sequence[float], *,
                  post_scale: float = 1.0, emulate: bool = False) -> Any:
    """``out = post_scale · Σ_k weights[k] · inputs[k]`` in place on the GPU
    (one launch). For repeated calls over the same tensors keep a
    :class:`DeviceSum` instead: this builds one each call.

    Returns:
        ``out``.
    """
    DeviceSum([out], *[[x] for x in inputs], emulate=emulate)(weights, post_scale)
    return out
