"""Type stubs for ladle._cuda, the optional CUDA module built from csrc/bindings_cuda.cc.

Keep in step with the bindings: tests/test_stubs.py compares the names here
with the compiled module's (when it was built). ``run`` takes the capsule of a
``ladle._core.Plan`` (``Plan._capsule()``), whose jobs of every kind it holds.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypedDict

from ._core import JobKind

class _StatusDict(TypedDict):
    device_count: int
    runtime_version: int
    driver_version: int
    error: str


class _DevicePropsDict(TypedDict):
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_n_bytes: int


# (name, out_address, out_dtype, n_elems, [(in_address, in_dtype), ...])
_DeviceTensorSpec: TypeAlias = tuple[str, int, str, int, Sequence[tuple[int, str]]]


def status() -> _StatusDict: ...
def device_props(device: int = 0) -> _DevicePropsDict: ...
def build_info() -> dict[str, Any]: ...
def supports(kind: JobKind) -> bool: ...
def run(
    plan: object,
    kinds: Sequence[JobKind] | None = None,
    device: int = 0,
    workers: int = 3,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    check_finite: bool = False,
    emulate: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]: ...
def time_method_pass(
    pass_: str,
    sparsify: str,
    n_elems: int,
    n_models: int,
    dtype: str,
    repeat: int = 10,
    device: int = 0,
) -> tuple[float, int]: ...


class DeviceSum:
    def __init__(
        self, device: int, tensors: Sequence[_DeviceTensorSpec], emulate: bool = False
    ) -> None: ...
    def run(self, weights: Sequence[float], post_scale: float = 1.0, stream: int = 0) -> None: ...
    @property
    def n_inputs(self) -> int: ...
    @property
    def n_tensors(self) -> int: ...
    @property
    def n_elems(self) -> int: ...
