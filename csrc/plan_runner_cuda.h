// The CUDA backend's entry point to a Plan (plan_runner.h is the CPU's): the jobs
// of a set of kinds, validated together first, each kind on its device runner
// (engine_cuda.h, methods_cuda.h). A selected kind this backend does not run
// (supports(kind) false) is refused when the plan holds jobs of it.
#pragma once

#include "engine_cuda.h"
#include "plan_runner.h"

namespace ladle {
namespace cuda {

// In run_in_order's order (plan_runner.h); results and statistics as ladle::run_jobs.
PlanResults run_jobs(const Plan& plan, KindSet kinds, const Options& options,
                     const ProgressFn& progress);

}  // namespace cuda
}  // namespace ladle
