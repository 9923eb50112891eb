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

// Checks an SCE job against its plan; run_sce_jobs and validate_jobs call it.
void validate_sce_job(const Plan& plan, const SceJob& job);

RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs,
                      const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
