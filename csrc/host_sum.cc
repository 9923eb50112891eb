#include "host_sum.h"

#include <algorithm>
#include <cstring>

#include "common.h"
#include "safetensors.h"

namespace ladle {
namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// dst[i] = fp32(fp32(x[i]) * scale of element elem + i); the kernels convert x
// exactly (weight 1, first input: acc = fp32(1 * x) = fp32(x)).
void dequantize(const Plan& plan, const KernelSet& kernels, const JobInput& in,
                const uint8_t* src, uint64_t elem, size_t n, float* dst) {
  const BlockScale& s = in.scale;
  kernels.accumulate(in.dtype, src, 1.0f, dst, n, true);
  const uint8_t* scales = plan.sources[s.source].base + s.offset;
  uint64_t blocks_per_row = ceil_div(s.n_cols, s.block_cols);
  uint64_t row = elem / s.n_cols, col = elem % s.n_cols;
  // One scale per run of elements inside one block of one row (a plain multiply
  // the compiler vectorises; same fp32 product per element as one at a time).
  for (size_t i = 0; i < n;) {
    uint64_t run = std::min<uint64_t>({n - i, s.block_cols - col % s.block_cols, s.n_cols - col});
    float scale =
        scale_at(scales, (row / s.block_rows) * blocks_per_row + col / s.block_cols, s.dtype);
    float* d = dst + i;
    for (uint64_t j = 0; j < run; ++j) d[j] = d[j] * scale;
    i += run;
    col += run;
    if (col == s.n_cols) {
      col = 0;
      ++row;
    }
  }
}

}  // namespace

bool is_scale_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

float scale_at(const uint8_t* base, uint64_t index, DType dtype) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, base + 4 * index, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, base + 2 * index, 2);
  return dtype == DType::kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

void validate_block_scale(const Plan& plan, const std::string& name, const JobInput& in,
                          uint64_t n_elems) {
  const BlockScale& s = in.scale;
  LADLE_CHECK(s.source < plan.sources.size(), ErrorKind::kValue,
              "tensor '%s': scale source index %u out of range", name.c_str(), s.source);
  const Source& src = plan.sources[s.source];
  LADLE_CHECK(s.block_rows > 0 && s.block_cols > 0 && s.n_cols > 0 && n_elems % s.n_cols == 0,
              ErrorKind::kValue,
              "%s: tensor '%s': block scales of %llux%llu over rows of %llu elements do not fit "
              "%llu elements",
              src.label.c_str(), name.c_str(), (unsigned long long)s.block_rows,
              (unsigned long long)s.block_cols, (unsigned long long)s.n_cols,
              (unsigned long long)n_elems);
  LADLE_CHECK(in.dtype != DType::kF64, ErrorKind::kValue,
              "tensor '%s': F64 inputs cannot be block-scaled", name.c_str());
  LADLE_CHECK(is_scale_dtype(s.dtype), ErrorKind::kValue,
              "%s: tensor '%s': block scales must be F32, BF16 or F16, not %s",
              src.label.c_str(), name.c_str(), dtype_name(s.dtype));
  uint64_t n_scales = ceil_div(n_elems / s.n_cols, s.block_rows) * ceil_div(s.n_cols, s.block_cols);
  uint64_t n_bytes = tensor_n_bytes(s.dtype, n_scales, "scales of tensor '" + name + "'");
  LADLE_CHECK(s.offset <= src.n_bytes && n_bytes <= src.n_bytes - s.offset, ErrorKind::kFormat,
              "%s: scales of tensor '%s': byte range [%llu, +%llu) exceeds the %llu bytes "
              "available",
              src.label.c_str(), name.c_str(), (unsigned long long)s.offset,
              (unsigned long long)n_bytes, (unsigned long long)src.n_bytes);
}

void sum_tile(const ChunkSet& chunks, const KernelSet& kernels, const Job& job, uint64_t elem,
              size_t n, bool check_finite, HostSumScratch* scratch) {
  float* acc = scratch->acc;
  bool first = true;
  for (const JobInput& in : job.inputs) {
    if (in.weight == 0.0f) continue;  // zero weights skip their input entirely
    const uint8_t* src = chunks.input_ptr(in, elem);
    if (check_finite) chunks.check_input_finite(job, in, src, n, elem);
    if (in.scale.present()) {
      dequantize(chunks.plan(), kernels, in, src, elem, n, scratch->values);
      kernels.accumulate(DType::kF32, scratch->values, in.weight, acc, n, first);
    } else {
      kernels.accumulate(in.dtype, src, in.weight, acc, n, first);
    }
    first = false;
  }
  if (first) std::fill(acc, acc + n, 0.0f);  // every weight was zero
}

void weighted_sum_f32(const ChunkSet& chunks, const KernelSet& kernels, const Job& job,
                      const WorkItem& item, bool check_finite, uint8_t* out,
                      HostSumScratch* scratch) {
  uint64_t out_size = item_n_bytes(job.out_dtype);
  for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
    uint64_t elem = item.first_elem + t;
    sum_tile(chunks, kernels, job, elem, n, check_finite, scratch);
    uint8_t* dst = out + t * out_size;
    kernels.store(job.out_dtype, scratch->acc, job.post_scale, dst, n);
    if (check_finite) chunks.check_output_finite(job, dst, n, elem);
  }
}

}  // namespace ladle
