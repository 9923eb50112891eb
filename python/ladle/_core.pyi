"""Type stubs for ladle._core, the pybind11 module built from csrc/bindings.cc.

Keep in step with the bindings: tests/test_stubs.py compares the names here
with the compiled module's.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypedDict

FILE_CHECKSUM_KEY: str
FILE_CHECKSUM_PLACEHOLDER: str

_PathLike: TypeAlias = str | os.PathLike[str]
# (source index, byte offset, dtype name)
_Input: TypeAlias = tuple[int, int, str]
# (name, dtype, shape, begin, end) of one header entry
_TensorEntry: TypeAlias = tuple[str, str, tuple[int, ...], int, int]
_Progress: TypeAlias = Callable[[int, int], Any] | None


class _HeaderDict(TypedDict):
    header_n_bytes: int
    data_start: int
    file_n_bytes: int
    metadata: dict[str, str] | None
    tensors: list[_TensorEntry]


class _RunStatsDict(TypedDict):
    bytes_read: int
    bytes_written: int
    n_chunks: int
    chunk_elems: int
    threads: int
    seconds: float
    kernel: str
    rng_draws: int  # DARE keep decisions drawn (run_tasks)


def read_header(path: _PathLike) -> _HeaderDict: ...
def parse_header(label: str, json: bytes, file_n_bytes: int) -> _HeaderDict: ...
def serialize_header(
    tensors: Sequence[tuple[str, str, Sequence[int], int, int]],
    metadata: Sequence[tuple[str, str]],
) -> bytes: ...
def dtype_n_bits(arg0: str) -> int: ...
def dtype_is_mergeable(arg0: str) -> bool: ...
def build_info() -> dict[str, Any]: ...
def supports(kind: str) -> bool: ...
def file_crc32c(path: _PathLike, crc: int = 0, offset: int = 0, n_bytes: int = ...) -> int: ...
def crc32c(data: bytes, crc: int = 0) -> int: ...
def _set_enospc_fault_after(n_bytes: int) -> None: ...


class Plan:
    def __init__(self) -> None: ...
    def add_file_source(self, path: _PathLike, expected_n_bytes: int = ...) -> int: ...
    def add_memory_source(self, label: str, address: int, n_bytes: int) -> int: ...
    def add_file_sink(self, path: _PathLike, n_bytes: int, header: bytes) -> int: ...
    def add_memory_sink(self, label: str, address: int, n_bytes: int) -> int: ...
    def add_job(
        self,
        name: str,
        op: str,
        n_elems: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        inputs: Sequence[tuple[int, int, str, float]],
        post_scale: float = 1.0,
        threshold: float = 0.0,
    ) -> None: ...
    def add_jobs(
        self,
        jobs: Sequence[
            tuple[str, str, int, int, int, str, Sequence[tuple[int, int, str, float]]]
        ],
    ) -> None: ...
    def scale_input(
        self, k: int, source: int, offset: int, block_rows: int, block_cols: int, n_cols: int
    ) -> None: ...
    def finish_sinks(self) -> None: ...
    def finish_sink(self, index: int) -> None: ...
    def release_source(self, source: int, offset: int, n_bytes: int) -> None: ...
    def _capsule(self) -> object: ...
    def clear_jobs(self) -> None: ...
    @property
    def n_jobs(self) -> int: ...


class MethodJobs:
    def __init__(self) -> None: ...
    def add_task(
        self,
        name: str,
        n_elems: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        base: _Input,
        models: Sequence[tuple[int, int, str, float, float, int, int]],
        sparsify: str,
        consensus: str,
        normalize: bool,
        rescale: str,
        lambda_: float,
        seed: int,
    ) -> None: ...
    def add_gram(self, name: str, n_elems: int, inputs: Sequence[_Input], base: int) -> None: ...
    @property
    def n_tasks(self) -> int: ...
    @property
    def n_grams(self) -> int: ...


def dot_products(
    plan: Plan,
    jobs: Sequence[tuple[str, int, _Input, Sequence[_Input]]],
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
) -> list[list[float]]: ...
def run_tasks(
    plan: Plan,
    jobs: MethodJobs,
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    check_finite: bool = False,
    kernel: str = "auto",
    progress: _Progress = None,
) -> _RunStatsDict: ...
def run_grams(
    plan: Plan,
    jobs: MethodJobs,
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    kernel: str = "auto",
    progress: _Progress = None,
) -> tuple[list[list[float]], _RunStatsDict]: ...
def tensor_key(name: str) -> int: ...
def dare_u24(seed: int, key: int, model: int, elem: int) -> int: ...
def run(
    plan: Plan,
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    check_finite: bool = False,
    kernel: str = "auto",
    progress: _Progress = None,
) -> _RunStatsDict: ...
