"""Where a method run's jobs execute: the CPU engine (``ladle._core``) or the CUDA
backend (``ladle._cuda``, or its CPU emulator), chosen once per run from ``device``.

Each backend declares the job kinds it runs (``supports(kind)``: ``sum``, ``copy``,
``max``, ``nearswap``, ``task``, ``gram``, ``dot``); a kind the CUDA backend does not
run (nearswap) goes to the CPU engine, so every method works on every device and
the bytes written do not depend on the device.

Example:
    >>> engine = MethodEngine("cuda", threads=0, memory_budget=256 << 20,
    ...                       chunk_elems=0, kernel="auto")       # doctest: +SKIP
    >>> engine.supports("task")                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

from .. import _core
from ..engine.cuda import parse_device


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
            self._cuda_opts = {"device": index, "memory_budget": memory_budget,
                               "chunk_elems": chunk_elems, "emulate": emulate}

    @property
    def cpu_options(self) -> dict[str, Any]:
        """Engine options of the CPU runners (DELLA, SCE, arcee_fusion and nuslerp's
        column pass have no CUDA implementation and run on the CPU on every device)."""
        return dict(self._cpu_opts)

    def supports(self, kind: str) -> bool:
        """Whether this run's backend executes job kind ``kind`` itself."""
        return _core.supports(kind) if self._cuda is None else self._cuda.supports(kind)

    def run(self, core_plan: Any, *, check_finite: bool, progress: Any) -> dict:
        """The plan's current jobs (weighted sums, copies, maxima, nearswap)."""
        from .merge import _run_on_device

        return _run_on_device(core_plan, self.device, threads=self._cpu_opts["threads"],
                              memory_budget=self._cpu_opts["memory_budget"],
                              check_finite=check_finite, kernel=self._cpu_opts["kernel"],
                              progress=progress)

    def run_on_cpu(self, core_plan: Any, *, check_finite: bool, progress: Any) -> dict:
        """The plan's current jobs on the CPU engine (kinds the device lacks)."""
        return _core.run(core_plan, check_finite=check_finite, progress=progress,
                         **self._cpu_opts)

    def run_tasks(self, core_plan: Any, jobs: Any, *, check_finite: bool,
                  progress: Any) -> dict:
        """Task-vector jobs (TIES, DARE, breadcrumbs, task arithmetic) into the sinks."""
        if self._cuda is None:
            return _core.run_tasks(core_plan, jobs, check_finite=check_finite,
                                   progress=progress, **self._cpu_opts)
        return self._cuda.run_tasks(core_plan._capsule(), jobs._tasks_capsule(),
                                    check_finite=check_finite, progress=progress,
                                    **self._cuda_opts)

    def run_grams(self, core_plan: Any, jobs: Any, *, progress: Any) -> tuple[list, dict]:
        """Gram matrices of the Gram jobs (SLERP, model stock, nuslerp): (grams, stats)."""
        if self._cuda is None:
            return _core.run_grams(core_plan, jobs, progress=progress, **self._cpu_opts)
        return self._cuda.run_grams(core_plan._capsule(), jobs._grams_capsule(),
                                    progress=progress, **self._cuda_opts)
