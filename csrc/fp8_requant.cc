#include "fp8_requant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "safetensors.h"

namespace ladle {
namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

}  // namespace

float block_scale_of(float amax) {
  float s = amax / kF8E4M3Max;
  // An all-zero block (or one whose amax/448 underflows) gets scale 1: its values
  // quantize to f8(x) (zeros stay zeros) and nobody divides by a zero scale.
  return s == 0.0f ? 1.0f : s;
}

void validate_out_scale(const Plan& plan, const Job& job) {
  const OutScale& s = job.out_scale;
  LADLE_CHECK(job.op == JobOp::kWeightedSum && job.out_dtype == DType::kF8_E4M3 &&
                  !job_in_f64(job),
              ErrorKind::kValue,
              "tensor '%s': fresh block scales are written only for fp32 weighted sums into "
              "F8_E4M3 (not %s)",
              job.name.c_str(), dtype_name(job.out_dtype));
  LADLE_CHECK(s.block_rows > 0 && s.block_cols > 0 && s.n_cols > 0 &&
                  job.n_elems % s.n_cols == 0,
              ErrorKind::kValue,
              "tensor '%s': output block scales of %llux%llu over rows of %llu elements do not "
              "fit %llu elements",
              job.name.c_str(), (unsigned long long)s.block_rows,
              (unsigned long long)s.block_cols, (unsigned long long)s.n_cols,
              (unsigned long long)job.n_elems);
  uint64_t n_scales =
      ceil_div(job.n_elems / s.n_cols, s.block_rows) * ceil_div(s.n_cols, s.block_cols);
  validate_output(plan, job.name + "'s scales", s.sink, s.offset, DType::kF32, n_scales, false);
}

void weighted_sum_fp8_blocks(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                             const WorkItem& item, bool check_finite, uint8_t* out,
                             HostSumScratch* sum, RequantScratch* scratch) {
  const OutScale& os = job.out_scale;
  const uint64_t n_cols = os.n_cols;
  const uint64_t blocks_per_row = ceil_div(n_cols, os.block_cols);
  // Pass 1: the merged fp32 values of the whole chunk (whole block rows).
  scratch->merged.resize(item.n_elems);
  float* merged = scratch->merged.data();
  for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
    sum_tile(chunks, kernels, job, item.first_elem + t, n, check_finite, sum);
    kernels.store(DType::kF32, sum->acc, job.post_scale, merged + t, n);
  }
  // A NaN or Inf has no block scale that represents it.
  size_t bad = find_nonfinite(DType::kF32, merged, item.n_elems);
  LADLE_CHECK(bad == item.n_elems, ErrorKind::kNonFinite,
              "%s: tensor '%s': merged value at element %llu is not finite; an FP8 block "
              "scale cannot represent it",
              chunks.plan().sinks[job.sink].label.c_str(), job.name.c_str(),
              (unsigned long long)(item.first_elem + bad));
  uint64_t first_row = item.first_elem / n_cols, n_rows = item.n_elems / n_cols;
  scratch->scales.resize(blocks_per_row);
  float* scales = scratch->scales.data();
  for (uint64_t r0 = 0; r0 < n_rows; r0 += os.block_rows) {
    uint64_t rows = std::min<uint64_t>(os.block_rows, n_rows - r0);
    // Pass 2: amax per block of this block row (all values are finite).
    std::fill(scales, scales + blocks_per_row, 0.0f);
    for (uint64_t r = r0; r < r0 + rows; ++r) {
      const float* row = merged + r * n_cols;
      for (uint64_t b = 0; b < blocks_per_row; ++b) {
        uint64_t c0 = b * os.block_cols, c1 = std::min(n_cols, c0 + os.block_cols);
        scales[b] = kernels.amax(row + c0, c1 - c0, scales[b]);
      }
    }
    for (uint64_t b = 0; b < blocks_per_row; ++b) scales[b] = block_scale_of(scales[b]);
    // Pass 3: q = f8_e4m3(x / s), as torch's (x / s).to(torch.float8_e4m3fn).
    for (uint64_t r = r0; r < r0 + rows; ++r) {
      const float* row = merged + r * n_cols;
      uint8_t* q = out + r * n_cols;
      for (uint64_t b = 0; b < blocks_per_row; ++b) {
        uint64_t c0 = b * os.block_cols, c1 = std::min(n_cols, c0 + os.block_cols);
        kernels.quantize_e4m3(row + c0, scales[b], q + c0, c1 - c0);
      }
    }
    // This block row's scales, at their place in the scale tensor.
    uint64_t block_row = (first_row + r0) / os.block_rows;
    uint64_t n_bytes = blocks_per_row * 4;
    SinkSpan span(chunks.plan().sinks[os.sink], os.offset + block_row * n_bytes, n_bytes,
                  &scratch->scale_staging);
    std::memcpy(span.out_span(), scales, n_bytes);
    span.commit();
  }
}

}  // namespace ladle
