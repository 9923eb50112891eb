// DELLA (Deep, Lee et al. 2024; mergekit's `della` / `della_linear`): MAGPRUNE drops
// each delta element at random with a keep probability that grows with the element's
// magnitude rank inside its rank group, rescales the kept ones and mixes the models
// (sign election for `della`, a plain sum for `della_linear`). docs/methods.md gives
// the formula and the order of fp32 operations.
//
// A rank group is mergekit's `dim=1` of the tensor: for a tensor of shape [a, b, ...]
// the b elements that share every other index (stride prod(shape[2:]) apart); a 0-D
// or 1-D tensor is one group. Groups are ranked whole, so the runner's unit of work is
// a block of `group_len * group_stride` contiguous elements (one index of dim 0),
// whose groups are sorted in the worker's scratch; nothing wider is ever held.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {

// Keep probability of the element of ascending magnitude rank `rank` (0-based; ties
// by index) in a group of `group_len`:
//   p = fp32(density - eps) + fp32(fp32(2 * fp32(rank / (group_len - 1))) * eps)
// with a one-element group at rank_norm 1/2.
float della_keep_probability(uint64_t rank, uint64_t group_len, float density_minus_eps,
                             float epsilon);

// Checks a DELLA job against its plan (inputs, weights, keep probabilities, rank
// groups, the output); run_della_jobs and validate_jobs call it.
void validate_della_job(const Plan& plan, const DellaJob& job);

RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
