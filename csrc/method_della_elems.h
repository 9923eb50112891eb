// Per-element formulas of DELLA (docs/methods.md), one source for the CPU runner
// (method_della.cc) and the CUDA kernels (method_kernels_cuda.cu): under nvcc they are
// __host__ __device__ (shared_fn.h), device code compiled with --fmad=false.
#pragma once

#include <cstdint>

#include "shared_fn.h"

namespace ladle {

// Keep probability of the element of ascending magnitude rank `rank` (0-based; ties
// by index) in a group of `group_len`:
//   p = fp32(density - eps) + fp32(fp32(2 * fp32(rank / (group_len - 1))) * eps)
// with a one-element group at rank_norm 1/2.
LADLE_SHARED_FN float della_keep_probability(uint64_t rank, uint64_t group_len,
                                             float density_minus_eps, float epsilon) {
  float rank_norm = group_len > 1
                        ? static_cast<float>(rank) / static_cast<float>(group_len - 1)
                        : 0.5f;
  float spread = (rank_norm * 2.0f) * epsilon;
  return density_minus_eps + spread;
}

}  // namespace ladle
