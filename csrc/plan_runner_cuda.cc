#include "plan_runner_cuda.h"

#include "common.h"
#include "methods_cuda.h"

namespace ladle {
namespace cuda {

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
  PlanResults out;
  run_selected_grams(plan, kinds, &out, [&](RunStats* stats) {
    return run_gram_jobs(plan, plan.grams, options, progress, stats);
  });
  if (kinds.has(JobKind::kDot) && !plan.dots.empty()) {
    RunStats stats;
    out.dots = run_dot_jobs(plan, plan.dots, options, progress, &stats);
    out.ran_dots = true;
    add_stats(&out.stats, stats);
  }
  if (engine) {
    Plan engine_only;
    add_stats(&out.stats, run_plan(with_engine_jobs(plan, kinds, &engine_only), options, progress));
  }
  if (kinds.has(JobKind::kTaskProgram) && !plan.tasks.empty())
    add_stats(&out.stats, run_task_jobs(plan, plan.tasks, options, progress));
  if (kinds.has(JobKind::kDella) && !plan.dellas.empty())
    add_stats(&out.stats, run_della_jobs(plan, plan.dellas, options, progress));
  if (kinds.has(JobKind::kSce) && !plan.sces.empty())
    add_stats(&out.stats, run_sce_jobs(plan, plan.sces, options, progress));
  return out;
}

}  // namespace cuda
}  // namespace ladle
