// Merge methods beyond a weighted sum (docs/methods.md has the formulas):
//  - task-vector programs (task arithmetic, TIES, DARE, breadcrumbs): per element,
//    deltas from a base, sparsified, weighted, sign-elected, mixed and added back;
//    magnitude sparsification needs per-tensor rank thresholds, found by streamed
//    histograms over fp32 bit patterns (no sort, no whole tensor in memory);
//  - the streamed Gram reduction (norms and dot products, fp64) from which SLERP and
//    model stock derive per-tensor coefficients that then run as weighted sums.
// Both run on the sources and sinks of an ordinary Plan, chunk by chunk on a pool of
// threads, and give results that do not depend on chunk size or thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "method_kernels.h"
#include "plan.h"

namespace ladle {

RunStats run_task_jobs(const Plan& plan, const std::vector<TaskJob>& jobs,
                       const EngineOptions& options, const ProgressFn& progress);

// Checks a task job against its plan (inputs, weights, densities, rank ranges, the
// output) before anything runs; every backend's task runner calls it.
void validate_task_job(const Plan& plan, const TaskJob& job);

// Checks a Gram job: its inputs, and a base index inside them (or -1); every
// backend's Gram runner calls it.
void validate_gram_job(const Plan& plan, const GramJob& job);

// Whether the job keeps deltas by magnitude rank (TIES, breadcrumbs): it needs the
// per-model rank thresholds of the statistics passes.
inline bool selects_by_rank(const TaskJob& job) {
  return job.sparsify == Sparsify::kMagnitude || job.sparsify == Sparsify::kOutliers;
}

// Returns, per job, the m*m Gram matrix row-major: G[a][b] = sum_i v_a[i] * v_b[i]
// with fp32 elements multiplied and summed in fp64, tile by tile in index order.
std::vector<std::vector<double>> run_gram_jobs(const Plan& plan, const std::vector<GramJob>& jobs,
                                               const EngineOptions& options,
                                               const ProgressFn& progress, RunStats* stats);

// FNV-1a 64 of the tensor name: the tensor part of DARE's RNG key.
uint64_t tensor_key(const std::string& name);

// DARE's counter-based uniform draw in [0, 2^24): element `elem` of model `model`
// (0-based among the non-base models) of the tensor keyed `key`:
//   s = mix(mix(mix(seed) ^ key) ^ (model + 1));  u = mix(s + (elem + 1) * golden) >> 40
// with mix the SplitMix64 finaliser and golden = 0x9E3779B97F4A7C15. An element is
// kept when u * 2^-24 < density.
uint32_t dare_u24(uint64_t seed, uint64_t key, uint32_t model, uint64_t elem);

}  // namespace ladle
