"""MergeReport: what a merge did and how fast. Its own module so that every
pipeline (merge, the live-input writer, methods) returns it without importing
the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .plan import MergePlan


@dataclass
class MergeReport:
    """What a merge did and how fast."""

    out: Path | None
    n_tensors: int
    n_shards: int
    bytes_read: int
    bytes_written: int
    seconds: float
    threads: int = 0
    chunk_elems: int = 0
    kernel: str = ""
    plan: MergePlan | None = None
    world_size: int = 1
    rank_bytes_read: list[int] | None = None  # distributed merges: input bytes each rank read
    # --device cuda: tensors the CUDA engine computed on the host (F64, block-scaled FP8)
    host_sums: int = 0
    # Task methods: rank thresholds found from a sample or its window (one read of the
    # tensor), and those the histogram passes found (two or three more reads)
    ranks_sampled: int = 0
    ranks_histogrammed: int = 0

    @property
    def gb_per_s(self) -> float:
        """(bytes read + written) / wall time, in 10^9 bytes per second."""
        return (self.bytes_read + self.bytes_written) / max(self.seconds, 1e-9) / 1e9
