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
    tensors: list[_TensorEntry] | dict[str, Any]  # dict: read_header with tensor_info


class _RunStatsDict(TypedDict):
    bytes_read: int
    bytes_written: int
    n_chunks: int
    chunk_elems: int
    threads: int
    seconds: float
    kernel: str
    rng_draws: int  # DARE keep decisions drawn (run_tasks)
    fp8_two_pass: int  # --dtype fp8 tensors summed twice (block row larger than a chunk)
    host_sums: int  # the CUDA engine's weighted sums computed on the host


def read_header(path: _PathLike, tensor_info: type | None = None,
                file: object = None) -> _HeaderDict: ...
def sum_table(tables: Sequence[Any], weights: Sequence[float], out_dtypes: dict[str, str],
              file_ids: dict[Any, int]) -> SumTable | None: ...
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
        self, k: int, source: int, offset: int, block_rows: int, block_cols: int, n_cols: int,
        dtype: str = "F32",
    ) -> None: ...
    def add_sum_table_jobs(
        self, table: SumTable, shard: int, sources: Sequence[int], sink: int,
        header_n_bytes: int,
    ) -> None: ...
    def scale_output(
        self, sink: int, offset: int, block_rows: int, block_cols: int, n_cols: int,
        dtype: str = "F32",
    ) -> None: ...
    def finish_sinks(self) -> None: ...
    def finish_sink(self, index: int) -> None: ...
    def release_source(self, source: int, offset: int, n_bytes: int) -> None: ...
    def _capsule(self) -> object: ...
    def clear_jobs(self) -> None: ...
    @property
    def n_jobs(self) -> int: ...


class SumTable:
    def __len__(self) -> int: ...
    def tensor(self, index: int) -> tuple[str, str, tuple[int, ...], int, int, int, int]: ...
    def names(self) -> list[str]: ...
    def shards(self) -> list[int]: ...
    def layout(self, max_shard_bytes: int, single_file: bool, header_split_bytes: int) -> int: ...
    def shard_header(self, shard: int, metadata: Sequence[tuple[str, str]]) -> bytes: ...
    def shard_data_n_bytes(self, shard: int) -> int: ...
    def shard_size(self, shard: int) -> int: ...
    def shard_tensor(self, shard: int, position: int) -> int: ...
    @property
    def bytes_read(self) -> int: ...


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
    def _tasks_capsule(self) -> object: ...
    def _grams_capsule(self) -> object: ...
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
# DELLA job: (name, n_elems, group_len, group_stride, sink, out_offset, out_dtype, base,
# models (source, offset, dtype, weight, density, epsilon), elect_sign, normalize,
# rescale ("none" | "l1" | "density"), lambda, seed).
_DellaJob: TypeAlias = tuple[
    str, int, int, int, int, int, str, _Input,
    Sequence[tuple[int, int, str, float, float, float]], bool, bool, str, float, int,
]

def run_della(
    plan: Plan,
    jobs: Sequence[_DellaJob],
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    check_finite: bool = False,
    kernel: str = "auto",
    progress: _Progress = None,
) -> _RunStatsDict: ...
# SCE job: (name, n_elems, sink, out_offset, out_dtype, base, models, select_topk).
_SceJob: TypeAlias = tuple[str, int, int, int, str, _Input, Sequence[_Input], float]

def run_sce(
    plan: Plan,
    jobs: Sequence[_SceJob],
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
