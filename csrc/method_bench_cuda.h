// Kernel-only timing of one pass of the methods' CUDA kernels (benchmarks only).
#pragma once

#include <cstdint>
#include <string>

#include "dtype.h"

namespace ladle {
namespace cuda {

struct PassTiming {
  double seconds = 0.0;  // per launch
  uint64_t bytes = 0;    // bytes the pass reads and writes (inputs once, output)
};

// Times `repeat` launches of pass `pass` (hist_hi, hist_lo, ties, l1, apply, gram, and
// SCE's sce_hist_hi, sce_ties, sce_squares, sce_apply, DELLA's della_rank) over
// device-resident inputs: a base and n_models models of n_elems elements of `dtype`;
// `sparsify` is "rank", "random", "prob" (DELLA's draw against keep probabilities; rank
// groups of 4096) or "none".
PassTiming time_method_pass(int device, const std::string& pass, const std::string& sparsify,
                            uint64_t n_elems, uint32_t n_models, DType dtype, int repeat);

}  // namespace cuda
}  // namespace ladle
