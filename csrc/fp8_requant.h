// Requantizing merged values to F8_E4M3 with fresh block scales (Job::out_scale):
// a chunk is a whole number of block rows (block_rows x C elements), summed once
// into an fp32 buffer, then its per-block amax gives the scales and a second pass
// over the buffer quantizes (the merge is never computed twice).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "chunk_runner.h"
#include "host_sum.h"
#include "kernels.h"

namespace ladle {

// The largest finite F8_E4M3 value: a block's amax maps onto it.
constexpr float kF8E4M3Max = 448.0f;

// Checks the output scale of job `job`: F8_E4M3 fp32 weighted sum, rows of n_cols
// elements, the scale tensor's byte range inside its sink.
void validate_out_scale(const Plan& plan, const Job& job);

// Per-worker buffers: the chunk's merged fp32 values and one block row of scales.
struct RequantScratch {
  std::vector<float> merged;
  std::vector<float> scales;
  std::vector<uint8_t> scale_staging;
};

// Writes the chunk's F8_E4M3 values to `out` and its block rows' scales to the
// scale sink. A merged value that is NaN or Inf is an error (no scale holds it).
void weighted_sum_fp8_blocks(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                             const WorkItem& item, bool check_finite, uint8_t* out,
                             HostSumScratch* sum, RequantScratch* scratch);

// The scalar reference of one block: s = amax/448 (1 when that is 0), q = f8(x/s).
float block_scale_of(float amax);

}  // namespace ladle
