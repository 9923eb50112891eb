// SCE (Wan et al. 2024, FuseChat; mergekit's `sce`): Select the elements whose task
// vectors vary most across the models (top `select_topk` by variance, one mask for all
// models), Calculate per-model weights from the selected deltas' mean square, Erase the
// deltas whose sign disagrees with the elected one, then the weighted mean of the rest.
// docs/methods.md gives the order of fp32/fp64 operations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {

struct SceJob {
  std::string name;
  uint64_t n_elems = 0;
  uint32_t sink = 0;
  uint64_t out_offset = 0;
  DType out_dtype = DType::kF32;
  JobInput base;
  std::vector<JobInput> models;
  double select_topk = 1.0;  // >= 1 selects every element, <= 0 none
};

RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs,
                      const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
