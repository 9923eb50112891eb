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
#include "method_della_elems.h"
#include "plan.h"

namespace ladle {

// Checks a DELLA job against its plan (inputs, weights, keep probabilities, rank
// groups, the output); run_della_jobs and validate_jobs call it.
void validate_della_job(const Plan& plan, const DellaJob& job);

// Refuses, naming the tensor, a job whose one rank block needs more scratch than half
// of `memory_budget` (every runner: the same jobs run, or are refused, on each device).
void check_della_block_fits(const DellaJob& job, uint64_t memory_budget);

// How a model's delta is pruned: every element kept (density >= 1), none (<= 0), or
// MAGPRUNE by rank.
enum class DellaPrune : uint8_t { kKeepAll, kDropAll, kMagPrune };
inline DellaPrune della_prune(const DellaModel& m) {
  if (m.density >= 1.0f) return DellaPrune::kKeepAll;
  if (m.density <= 0.0f) return DellaPrune::kDropAll;
  return DellaPrune::kMagPrune;
}

// Elements per unit of the L1 partial sums: whole rank blocks, at least one method tile.
uint64_t della_unit_elems(const DellaJob& job);

// Whether the job rescales by L1 norms (and has a model to prune): a norm pass first.
bool della_needs_norms(const DellaJob& job);

// mergekit's L1 rescale of a pruned model: |delta|_1 / |kept|_1, or none (false) when
// either sum is below 1e-7.
inline bool della_l1_scale(double before, double after, float* scale) {
  if (before < 1e-7 || after < 1e-7) return false;
  *scale = static_cast<float>(before / after);
  return true;
}

RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
