#include "fp8_requant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "safetensors.h"

namespace ladle {
namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// fp32 -> dtype -> fp32, to nearest even (the scales' dtype: F32, BF16 or F16).
float round_to(float s, DType dtype) {
  if (dtype == DType::kBF16) return bf16_to_f32(f32_to_bf16(s));
  if (dtype == DType::kF16) return f16_to_f32(f32_to_f16(s));
  return s;
}

// The next value of `dtype` above the non-negative finite s (a value of dtype).
float next_up(float s, DType dtype) {
  if (dtype == DType::kBF16) return bf16_to_f32(static_cast<uint16_t>(f32_to_bf16(s) + 1));
  if (dtype == DType::kF16) return f16_to_f32(static_cast<uint16_t>(f32_to_f16(s) + 1));
  return std::nextafter(s, INFINITY);
}

void throw_nonfinite(const Plan& plan, const Job& job, uint64_t elem) {
  raise(ErrorKind::kNonFinite,
        format("%s: tensor '%s': merged value at element %llu is not finite; an FP8 block "
               "scale cannot represent it",
               plan.sinks[job.sink].label.c_str(), job.name.c_str(), (unsigned long long)elem));
}

}  // namespace

float block_scale_of(float amax, DType dtype) {
  float s = amax / kF8E4M3Max;
  // An all-zero block (or one whose amax/448 underflows) gets scale 1: its values
  // quantize to f8(x) (zeros stay zeros) and nobody divides by a zero scale.
  if (s == 0.0f) s = 1.0f;
  float r = round_to(s, dtype);
  // E4M3 rounds values up to 464 (a tie, to even) down to 448; beyond that the
  // block's largest value would saturate (torch would give NaN). One step up is
  // enough: r rounded from s, so the next value is above s.
  if (std::isfinite(r) && !(amax / r <= 464.0f)) r = next_up(r, dtype);
  return r;
}

float merged_scale(const Plan& plan, const Job& job, float amax) {
  float s = block_scale_of(amax, job.out_scale.dtype);
  LADLE_CHECK(std::isfinite(s), ErrorKind::kValue,
              "%s: tensor '%s': merged values up to %g need an FP8 block scale of %g, "
              "beyond the largest %s; write BF16 or F32 scales (an input with them) or "
              "--dtype bf16",
              plan.sinks[job.sink].label.c_str(), job.name.c_str(), (double)amax,
              (double)(amax / kF8E4M3Max), dtype_name(job.out_scale.dtype));
  return s;
}

void store_scales(const float* s, size_t n, DType dtype, uint8_t* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, s, 4 * n);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h = dtype == DType::kBF16 ? f32_to_bf16(s[i]) : f32_to_f16(s[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
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
  LADLE_CHECK(is_scale_dtype(s.dtype), ErrorKind::kValue,
              "tensor '%s': fresh block scales must be F32, BF16 or F16, not %s",
              job.name.c_str(), dtype_name(s.dtype));
  uint64_t n_scales =
      ceil_div(job.n_elems / s.n_cols, s.block_rows) * ceil_div(s.n_cols, s.block_cols);
  validate_output(plan, job.name + "'s scales", s.sink, s.offset, s.dtype, n_scales, false);
}

void merged_tile(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                 uint64_t elem, size_t n, bool check_finite, HostSumScratch* scratch,
                 float* dst) {
  sum_tile(chunks, kernels, job, elem, n, check_finite, scratch);
  kernels.store(DType::kF32, scratch->acc, job.post_scale, dst, n);
  // A NaN or Inf has no block scale that represents it.
  size_t bad = find_nonfinite(DType::kF32, dst, n);
  if (bad != n) throw_nonfinite(chunks.plan(), job, elem + bad);
}

void weighted_sum_fp8_blocks(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                             const WorkItem& item, bool check_finite, uint8_t* out,
                             HostSumScratch* sum, RequantScratch* scratch) {
  const OutScale& os = job.out_scale;
  const uint64_t n_cols = os.n_cols;
  const uint64_t blocks_per_row = ceil_div(n_cols, os.block_cols);
  // Pass 1: the merged fp32 values of the whole chunk (whole block rows), all finite.
  scratch->merged.resize(item.n_elems);
  float* merged = scratch->merged.data();
  for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
    merged_tile(chunks, kernels, job, item.first_elem + t, n, check_finite, sum, merged + t);
  }
  uint64_t first_row = item.first_elem / n_cols, n_rows = item.n_elems / n_cols;
  scratch->scales.resize(blocks_per_row);
  float* scales = scratch->scales.data();
  for (uint64_t r0 = 0; r0 < n_rows; r0 += os.block_rows) {
    uint64_t rows = std::min<uint64_t>(os.block_rows, n_rows - r0);
    // Pass 2: amax per block of this block row.
    std::fill(scales, scales + blocks_per_row, 0.0f);
    for (uint64_t r = r0; r < r0 + rows; ++r) {
      const float* row = merged + r * n_cols;
      for (uint64_t b = 0; b < blocks_per_row; ++b) {
        uint64_t c0 = b * os.block_cols, c1 = std::min(n_cols, c0 + os.block_cols);
        scales[b] = kernels.amax(row + c0, c1 - c0, scales[b]);
      }
    }
    for (uint64_t b = 0; b < blocks_per_row; ++b)
      scales[b] = merged_scale(chunks.plan(), job, scales[b]);
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
    uint64_t n_bytes = blocks_per_row * item_n_bytes(os.dtype);
    SinkSpan span(chunks.plan().sinks[os.sink], os.offset + block_row * n_bytes, n_bytes,
                  &scratch->scale_staging);
    store_scales(scales, blocks_per_row, os.dtype, span.out_span());
    span.commit();
  }
}

}  // namespace ladle
