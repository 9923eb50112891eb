// The fp32 weighted sum of one chunk on the host: the CPU engine's weighted sums,
// and the CUDA engine's jobs with block-scaled inputs (computed on the host like
// its fp64 jobs). Block-scaled inputs (JobInput::scale) are dequantized one tile
// at a time, never as whole tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "chunk_runner.h"
#include "kernels.h"

namespace ladle {

constexpr size_t kHostTileElems = 2048;  // accumulator tile, stays in L1

// Per-worker scratch: the accumulator and one tile of dequantized values.
struct HostSumScratch {
  float acc[kHostTileElems];
  float values[kHostTileElems];
};

// Scales are stored as F32, BF16 or F16 (DType of BlockScale/OutScale).
bool is_scale_dtype(DType dtype);
// Scale `index` of a row-major scale tensor at `base`, converted exactly to fp32.
float scale_at(const uint8_t* base, uint64_t index, DType dtype);

// Checks the block scale of input `in` of a weighted sum of tensor `name` with
// n_elems elements: block and row sizes, and the scale tensor's byte range.
void validate_block_scale(const Plan& plan, const std::string& name, const JobInput& in,
                          uint64_t n_elems);

// scratch->acc[0, n) = the fp32 weighted sum of elements [elem, +n) of `job`'s
// inputs (n <= kHostTileElems) under the arithmetic contract (kernels.h).
void sum_tile(const ChunkSet& chunks, const KernelSet& kernels, const Job& job, uint64_t elem,
              size_t n, bool check_finite, HostSumScratch* scratch);

// out[i] for the chunk's elements under the arithmetic contract (kernels.h), zero
// weights skipped; a block-scaled input contributes w * fp32(fp32(x) * scale).
void weighted_sum_f32(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                      const WorkItem& item, bool check_finite, uint8_t* out,
                      HostSumScratch* scratch);

}  // namespace ladle
