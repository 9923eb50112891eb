"""Where a method run's jobs execute: the CPU engine (``ladle._core``) or the CUDA
backend (``ladle._cuda``, or its CPU emulator), chosen once per run from ``device``.

A run's jobs of every kind sit in one ``_core.Plan``; each call runs the plan's jobs
of a set of kinds (``sum``, ``copy``, ``max``, ``nearswap``, ``task``, ``gram``,
``dot``, ``della``, ``sce``). Each backend declares the kinds it runs
(``supports(kind)``; the CUDA backend now runs every kind); a kind a backend does not
run goes to the CPU engine, so every method works on every device and the bytes
written do not depend on the device.

Example:
    >>> engine = MethodEngine("cuda", threads=0, memory_budget=256 << 20,
    ...                       chunk_elems=0, kernel="auto")       # doctest: +SKIP
    >>> engine.supports("task")                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import _core
from ..engine.cuda import parse_device
from ..engine.kinds import core_kinds


class MethodEngine:
    """The backend of one method run and its engine options."""

    def __init__(self, device: str, *, threads: int, memory_budget: int, chunk_elems: int,
                 kernel: str) -> None:
        self.device = device
        self._cpu_opts = {"threads": threads, "memory_budget": memory_budget,
                          "chunk_elems": chunk_elems, "kernel": kernel}
        self._cuda = None
        if parse_device(device)[0] != "cpu":
            from ..engine.cuda import require

            self._cuda, index, emulate = require(device)
            self._cuda_opts = {"device": index, "workers": threads or 3,
                               "memory_budget": memory_budget, "chunk_elems": chunk_elems,
                               "emulate": emulate}

    @property
    def cpu_options(self) -> dict[str, Any]:
        """Engine options of the CPU runners (arcee_fusion and nuslerp's column pass have
        no CUDA implementation and run on the CPU on every device)."""
        return dict(self._cpu_opts)

    def supports(self, kind: str) -> bool:
        """Whether this run's backend executes job kind ``kind`` itself."""
        [k] = core_kinds([kind])
        return _core.supports(k) if self._cuda is None else self._cuda.supports(k)

    def run(self, core_plan: Any, kinds: Iterable[str], *, check_finite: bool,
            progress: Any) -> dict:
        """The plan's jobs of ``kinds`` on this run's device: its statistics, with
        ``grams`` (one Gram matrix per Gram job) when Gram jobs ran."""
        if self._cuda is None:
            return self.run_on_cpu(core_plan, kinds, check_finite=check_finite,
                                   progress=progress)
        return self._cuda.run(core_plan._capsule(), kinds=core_kinds(kinds),
                              check_finite=check_finite, progress=progress, **self._cuda_opts)

    def run_on_cpu(self, core_plan: Any, kinds: Iterable[str], *, check_finite: bool,
                   progress: Any) -> dict:
        """The plan's jobs of ``kinds`` on the CPU engine (kinds the device lacks)."""
        return _core.run(core_plan, kinds=core_kinds(kinds), check_finite=check_finite,
                         progress=progress, **self._cpu_opts)
