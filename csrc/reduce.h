// Streamed reductions over a Plan's sources: per tensor, the dot products
// <g, x_k> of one tensor g (e.g. a gradient dL/dθ) with the matching tensors x_k
// of N inputs, accumulated in fp64. The learned soup's gradient with respect to
// each mixing coefficient is exactly this, so it needs one model's memory whatever N.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"

namespace ladle {

struct DotOptions {
  int threads = 0;                        // 0: all hardware threads
  uint64_t memory_budget = 256ull << 20;  // bounds the chunk length, as for merges
  uint64_t chunk_elems = 0;               // 0: derive from the budget
};

// Raises ladle::Error when a range lies outside its source or a dtype is not a float.
void validate_dot_job(const Plan& plan, const DotJob& job);

// Returns, for every job, the N values sum_i double(g[i]) * double(x_k[i]), in fp64 in
// the Gram pass's fixed order: each tile of kMethodTileElems (2048) elements in element
// order, then the tensor tile by tile, every sum from +0. Chunks are whole tiles and
// their tile sums are added in order, so neither the thread count nor the chunk length
// (nor the memory budget it comes from) changes a bit, and a device that sums tiles in
// parallel gives the same bits. Input pages of
// memory-mapped sources are released behind the cursor. Raises ladle::Error when a
// range lies outside its source or a dtype is not a float type.
std::vector<std::vector<double>> dot_products(const Plan& plan, const std::vector<DotJob>& jobs,
                                              const DotOptions& options);

}  // namespace ladle
