// The merge methods on the CUDA backend: task-vector jobs (task arithmetic, TIES,
// DARE, breadcrumbs), Gram reductions (SLERP, model stock, nuslerp), DELLA, SCE and
// dot-product jobs over the sources and sinks of a Plan, chunk by chunk through the device (or the
// emulator). Same contract and the same bits as run_task_jobs / run_gram_jobs
// (methods.h), run_della_jobs (method_della.h) and run_sce_jobs (method_sce.h).
#pragma once

#include <vector>

#include "engine_cuda.h"
#include "methods.h"

namespace ladle {
namespace cuda {

RunStats run_task_jobs(const Plan& plan, const std::vector<TaskJob>& jobs, const Options& options,
                       const ProgressFn& progress);

std::vector<std::vector<double>> run_gram_jobs(const Plan& plan, const std::vector<GramJob>& jobs,
                                               const Options& options, const ProgressFn& progress,
                                               RunStats* stats);

// methods_della_cuda.cc
RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const Options& options, const ProgressFn& progress);

// methods_sce_cuda.cc
RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs, const Options& options,
                      const ProgressFn& progress);

// methods_dot_cuda.cc: the same values and bits as dot_products (reduce.h).
std::vector<std::vector<double>> run_dot_jobs(const Plan& plan, const std::vector<DotJob>& jobs,
                                              const Options& options, const ProgressFn& progress,
                                              RunStats* stats);

}  // namespace cuda
}  // namespace ladle
