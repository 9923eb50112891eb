#include "plan_runner_cuda.h"

#include "common.h"
#include "methods_cuda.h"

namespace ladle {
namespace cuda {
namespace {

// The device's runner of each kind, for run_in_order.
struct GpuRunners {
  const Plan& plan;
  const Options& options;
  const ProgressFn& progress;

  std::vector<std::vector<double>> grams(RunStats* stats) const {
    return run_gram_jobs(plan, plan.grams, options, progress, stats);
  }
  std::vector<std::vector<double>> dots(RunStats* stats) const {
    return run_dot_jobs(plan, plan.dots, options, progress, stats);
  }
  RunStats engine(const Plan& engine_jobs) const { return run_plan(engine_jobs, options, progress); }
  RunStats tasks() const { return run_task_jobs(plan, plan.tasks, options, progress); }
  RunStats dellas() const { return run_della_jobs(plan, plan.dellas, options, progress); }
  RunStats sces() const { return run_sce_jobs(plan, plan.sces, options, progress); }
};

}  // namespace

PlanResults run_jobs(const Plan& plan, KindSet kinds, const Options& options,
                     const ProgressFn& progress) {
  bool engine = false;
  for (JobKind k : kAllJobKinds) {
    if (!kinds.has(k)) continue;
    size_t n = count_jobs(plan, k);
    LADLE_CHECK(cuda::supports(k) || n == 0, ErrorKind::kValue,
                "the CUDA backend does not run %s jobs (%zu in the plan): run them on the CPU",
                job_kind_name(k), n);
    engine = engine || is_engine_kind(k);
  }
  validate_if_several(plan, kinds);
  return run_in_order(plan, kinds, engine, GpuRunners{plan, options, progress});
}

}  // namespace cuda
}  // namespace ladle
