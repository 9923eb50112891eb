"""Type stubs for ladle._core, the pybind11 module built from csrc/bindings.cc.

Keep in step with the bindings: tests/test_stubs.py compares the names here
with the compiled module's.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, NotRequired, TypeAlias, TypedDict

FILE_CHECKSUM_KEY: str
FILE_CHECKSUM_PLACEHOLDER: str

_PathLike: TypeAlias = str | os.PathLike[str]
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
    rng_draws: int  # DARE keep decisions drawn (task jobs)
    ranks_sampled: int  # rank thresholds found from a sample or its window (task jobs)
    ranks_histogrammed: int  # rank thresholds found by the histogram passes (task jobs)
    fp8_two_pass: int  # --dtype fp8 tensors summed twice (block row larger than a chunk)
    host_sums: int  # the CUDA engine's weighted sums computed on the host
    grams: NotRequired[list[list[float]]]  # per Gram job (row-major m*m), when they ran
    dots: NotRequired[list[list[float]]]  # per dot job, when they ran


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
def supports(kind: JobKind) -> bool: ...
def file_crc32c(path: _PathLike, crc: int = 0, offset: int = 0, n_bytes: int = ...) -> int: ...
def crc32c(data: bytes, crc: int = 0) -> int: ...
def crc32c_combine(crc1: int, crc2: int, len2: int) -> int: ...
def _set_enospc_fault_after(n_bytes: int) -> None: ...


# Bound enums (pybind11 py::enum_): members named as the strings of the public API;
# engine/kinds.py core_enum() turns a string into one.
class JobKind:
    sum: JobKind
    copy: JobKind
    max: JobKind
    nearswap: JobKind
    task: JobKind
    gram: JobKind
    dot: JobKind
    della: JobKind
    sce: JobKind
    __members__: dict[str, JobKind]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class Sparsify:
    none: Sparsify
    magnitude: Sparsify
    random: Sparsify
    outliers: Sparsify
    __members__: dict[str, Sparsify]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class Consensus:
    none: Consensus
    sum: Consensus
    count: Consensus
    __members__: dict[str, Consensus]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class Rescale:
    none: Rescale
    density: Rescale
    l1: Rescale
    __members__: dict[str, Rescale]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class DellaRescale:
    none: DellaRescale
    l1: DellaRescale
    density: DellaRescale
    __members__: dict[str, DellaRescale]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class Input:
    def __init__(self, source: int, offset: int, dtype: str, weight: float = 1.0) -> None: ...
    @property
    def source(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def weight(self) -> float: ...


class TaskModel:
    def __init__(self, input: Input, density: float = 1.0, rank_lo: int = 0,
                 rank_hi: int = 0) -> None: ...
    @property
    def input(self) -> Input: ...
    @property
    def density(self) -> float: ...
    @property
    def rank_lo(self) -> int: ...
    @property
    def rank_hi(self) -> int: ...


class DellaModel:
    def __init__(self, input: Input, density: float, epsilon: float) -> None: ...
    @property
    def input(self) -> Input: ...
    @property
    def density(self) -> float: ...
    @property
    def epsilon(self) -> float: ...


class Plan:
    def __init__(self) -> None: ...
    def add_file_source(self, path: _PathLike, expected_n_bytes: int = ...) -> int: ...
    def add_memory_source(self, label: str, address: int, n_bytes: int) -> int: ...
    def add_file_sink(self, path: _PathLike, n_bytes: int, header: bytes) -> int: ...
    def add_memory_sink(self, label: str, address: int, n_bytes: int) -> int: ...
    def add_job(
        self,
        name: str,
        op: JobKind,  # sum, copy, max or nearswap
        n_elems: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        inputs: Sequence[Input],
        post_scale: float = 1.0,
        threshold: float = 0.0,
    ) -> None: ...
    # The bulk path of 10^6-tensor plans: tuples read with the CPython API, op a name
    # ("sum", "copy", "max") and each input (source, offset, dtype, weight).
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
    def finish_sink(self, index: int) -> int | None: ...
    def release_source(self, source: int, offset: int, n_bytes: int) -> None: ...
    def add_task(
        self,
        name: str,
        n_elems: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        base: Input,
        models: Sequence[TaskModel],
        sparsify: Sparsify,
        consensus: Consensus,
        normalize: bool,
        rescale: Rescale,
        lambda_: float,
        seed: int,
    ) -> None: ...
    def add_gram(self, name: str, n_elems: int, inputs: Sequence[Input], base: int) -> None: ...
    def add_della(
        self,
        name: str,
        n_elems: int,
        group_len: int,
        group_stride: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        base: Input,
        models: Sequence[DellaModel],
        elect_sign: bool,
        normalize: bool,
        rescale: DellaRescale,
        lambda_: float,
        seed: int,
    ) -> None: ...
    def add_sce(
        self,
        name: str,
        n_elems: int,
        sink: int,
        out_offset: int,
        out_dtype: str,
        base: Input,
        models: Sequence[Input],
        select_topk: float,
    ) -> None: ...
    def add_dot(self, name: str, n_elems: int, lhs: Input, inputs: Sequence[Input]) -> None: ...
    def _capsule(self) -> object: ...
    def clear_jobs(self, kinds: Sequence[JobKind] | None = None) -> None: ...
    def count(self, kind: JobKind) -> int: ...
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


def tensor_key(name: str) -> int: ...
def dare_u24(seed: int, key: int, model: int, elem: int) -> int: ...
def run(
    plan: Plan,
    kinds: Sequence[JobKind] | None = None,
    threads: int = 0,
    memory_budget: int = ...,
    chunk_elems: int = 0,
    check_finite: bool = False,
    kernel: str = "auto",
    progress: _Progress = None,
) -> _RunStatsDict: ...
