// Requantizing merged values to F8_E4M3 with fresh block scales (Job::out_scale).
// One pass when a block row (block_rows x C elements) fits a chunk: a chunk is a
// whole number of block rows, summed once into an fp32 buffer, then its per-block
// amax gives the scales and a second loop over the buffer quantizes (the merge is
// computed once). Larger block rows (compressed-tensors' per-tensor scale is one
// R x C block) take two passes over the inputs instead (fp8_two_pass.h).
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
// elements, a scale dtype (F32/BF16/F16), the scale tensor's byte range in its sink.
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

// The scale of a block whose largest |merged value| is `amax`, as stored in `dtype`
// and used to quantize: s = fp32(amax / 448) (1 when that is 0), rounded to `dtype`
// to nearest even; if that rounding went down so far that amax / s would round past
// 448 in E4M3 (F16 subnormal scales, or s rounding to 0) it takes the next value of
// `dtype` up, so no value saturates. Infinite when `dtype` cannot hold s (F16 above
// 65504): the caller's error (merged_scale).
float block_scale_of(float amax, DType dtype);

// block_scale_of, raising a kValue error naming the sink and tensor when the scale
// does not fit the scale dtype.
float merged_scale(const Plan& plan, const Job& job, float amax);

// Scales s[0, n) written as `dtype` at dst (exact: they are values of dtype).
void store_scales(const float* s, size_t n, DType dtype, uint8_t* dst);

// dst[0, n) = the merged values x (fp32, post_scale applied; NaN/Inf an error) of
// elements [elem, +n) of a job with fresh scales (n <= kHostTileElems).
void merged_tile(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                 uint64_t elem, size_t n, bool check_finite, HostSumScratch* scratch,
                 float* dst);

}  // namespace ladle
