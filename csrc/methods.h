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

enum class Sparsify : uint8_t {
  kNone,
  kMagnitude,  // TIES: keep the rank_hi largest |delta| (rank range [0, rank_hi))
  kRandom,     // DARE: keep with probability `density` (counter-based RNG)
  kOutliers,   // breadcrumbs: keep descending ranks [rank_lo, rank_hi)
};

enum class Consensus : uint8_t { kNone, kSum, kCount };

// What kept deltas are multiplied by after sparsification.
enum class Rescale : uint8_t {
  kNone,
  kDensity,  // kRandom only: divide by density (the DARE paper)
  kL1,       // match the L1 norm of the unsparsified delta (mergekit's `rescale`):
             // scale = |delta|_1 / |kept|_1 unless either is below 1e-7
};

struct TaskModel {
  JobInput input;          // input.weight is the model's weight w_k (fp32)
  float density = 1.0f;    // kRandom: keep probability
  uint64_t rank_lo = 0;    // kMagnitude/kOutliers: keep elements whose rank by
  uint64_t rank_hi = 0;    // descending |delta| (ties by index) is in [lo, hi)
};

struct TaskJob {
  std::string name;
  uint64_t n_elems = 0;
  uint32_t sink = 0;
  uint64_t out_offset = 0;
  DType out_dtype = DType::kF32;
  JobInput base;
  std::vector<TaskModel> models;
  Sparsify sparsify = Sparsify::kNone;
  Consensus consensus = Consensus::kNone;
  bool normalize = false;   // divide the mixed delta by the (masked) weight sum
  Rescale rescale = Rescale::kNone;
  float lambda = 1.0f;      // scales the mixed delta; 1 skips the multiplication
  uint64_t seed = 0;        // kRandom
  uint64_t tensor_key = 0;  // kRandom: tensor_key(name)
};

// Gram matrix of m vectors: the inputs, or (base >= 0) every input but the base
// minus the base. Weights of the inputs are ignored.
struct GramJob {
  std::string name;
  uint64_t n_elems = 0;
  std::vector<JobInput> inputs;
  int32_t base = -1;
};

// Names of the PyCapsules through which ladle._core hands its MethodJobs' task and
// Gram jobs (std::vector<TaskJob>, std::vector<GramJob>) to ladle._cuda.
constexpr const char kTaskJobsCapsuleName[] = "ladle.TaskJobs.v1";
constexpr const char kGramJobsCapsuleName[] = "ladle.GramJobs.v1";

RunStats run_task_jobs(const Plan& plan, const std::vector<TaskJob>& jobs,
                       const EngineOptions& options, const ProgressFn& progress);

// Checks a task job against its plan (inputs, weights, densities, rank ranges, the
// output) before anything runs; every backend's task runner calls it.
void validate_task_job(const Plan& plan, const TaskJob& job);

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
