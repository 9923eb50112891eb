// Per-element formulas of SCE (docs/methods.md), one source for the CPU runner
// (method_sce.cc) and the CUDA kernels (method_kernels_cuda.cu): under nvcc they are
// __host__ __device__, and device code is compiled with --fmad=false, so every fp32 and
// fp64 operation rounds on its own there as on the CPU (-ffp-contract=off).
#pragma once

#include <cstdint>
#include <cstring>

#include "shared_fn.h"

namespace ladle {

// The bits that rank a variance v (>= 0 or NaN): its bit pattern, every NaN as
// 0x7FC00000, so NaN variances rank above every number and equal to each other (ties
// by index) whatever payload the fp64 arithmetic left them (the GPU's differ from x86's).
LADLE_SHARED_FN uint32_t sce_rank_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u &= 0x7FFFFFFFu;
  return u > 0x7F800000u ? 0x7FC00000u : u;
}

// The rank bits of the variance of one element's deltas tv(k) over the m models: fp64
// two-pass, sums in model order, rounded to fp32 once.
template <class Delta>
LADLE_SHARED_FN uint32_t sce_variance_bits(uint32_t m, const Delta& tv) {
  double mean = 0.0;
  for (uint32_t k = 0; k < m; ++k) mean += static_cast<double>(tv(k));
  mean /= static_cast<double>(m);
  double var = 0.0;
  for (uint32_t k = 0; k < m; ++k) {
    double d = static_cast<double>(tv(k)) - mean;
    var += d * d;
  }
  return sce_rank_bits(static_cast<float>(var / static_cast<double>(m)));
}

// Erase and mix, in fp32: the weight(k)-weighted mean of the selected deltas tv(k)
// whose sign agrees with the sign of their sum (zeros never agree), the divisor at
// least 1e-6. The caller adds it to the base.
template <class Delta, class Weight>
LADLE_SHARED_FN float sce_mixed_delta(uint32_t m, const Delta& tv, const Weight& weight) {
  float total = 0.0f;
  for (uint32_t k = 0; k < m; ++k) total = total + tv(k);
  int majority = total >= 0.0f ? 1 : -1;
  float sum = 0.0f, divisor = 0.0f;
  for (uint32_t k = 0; k < m; ++k) {
    float v = tv(k);
    if ((v > 0.0f ? 1 : (v < 0.0f ? -1 : 0)) != majority) continue;
    sum = sum + v * weight(k);
    divisor = divisor + weight(k);
  }
  divisor = divisor < 1e-6f ? 1e-6f : divisor;
  return sum / divisor;
}

}  // namespace ladle
