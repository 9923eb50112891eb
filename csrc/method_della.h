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

enum class DellaRescale : uint8_t {
  kNone,
  kL1,           // mergekit: kept deltas times |delta|_1 / |kept|_1 (whole tensor, fp64 sums)
  kProbability,  // the paper: each kept element divided by its own keep probability
};

struct DellaModel {
  JobInput input;         // input.weight is the model's weight w_k (fp32)
  float density = 1.0f;   // >= 1 keeps everything, <= 0 drops everything
  float epsilon = 0.0f;   // keep probabilities span [density - eps, density + eps]
  float floor = 1.0f;     // fp32(density - epsilon) (rounded once from fp64)
};

struct DellaJob {
  std::string name;
  uint64_t n_elems = 0;
  uint64_t group_len = 1;     // elements per rank group (shape[1], or n for 0-D/1-D)
  uint64_t group_stride = 1;  // distance between a group's elements (prod(shape[2:]))
  uint32_t sink = 0;
  uint64_t out_offset = 0;
  DType out_dtype = DType::kF32;
  JobInput base;
  std::vector<DellaModel> models;
  bool elect_sign = false;  // `della`: TIES sign election (sum); `della_linear`: none
  bool normalize = false;   // divide by the (agreeing) weight sum
  DellaRescale rescale = DellaRescale::kNone;
  float lambda = 1.0f;
  uint64_t seed = 0;
  uint64_t tensor_key = 0;  // tensor_key(name): DARE's RNG stream (methods.h, dare_u24)
};

// Keep probability of the element of ascending magnitude rank `rank` (0-based; ties
// by index) in a group of `group_len`:
//   p = fp32(density - eps) + fp32(fp32(2 * fp32(rank / (group_len - 1))) * eps)
// with a one-element group at rank_norm 1/2.
float della_keep_probability(uint64_t rank, uint64_t group_len, float density_minus_eps,
                             float epsilon);

RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
