// The one entry point that runs a Plan: the jobs of a set of kinds, validated
// together before any byte is written, each kind on its own runner (engine.h,
// methods.h, method_della.h, method_sce.h, reduce.h) with the same options, their
// statistics summed into one RunStats. The CUDA backend's twin is cuda::run_jobs
// (plan_runner_cuda.h).
#pragma once

#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {

// What a run returns: its statistics and, when those kinds ran, one Gram matrix
// (row-major m*m) per Gram job and one list of dot products per dot job.
struct PlanResults {
  RunStats stats;
  bool ran_grams = false;
  bool ran_dots = false;
  std::vector<std::vector<double>> grams;
  std::vector<std::vector<double>> dots;
};

// Checks every job of the kinds in `kinds` against the plan's sources and sinks
// (each kind's own validator); raises ladle::Error naming the tensor.
void validate_jobs(const Plan& plan, KindSet kinds);

// Each runner validates its own jobs before it writes; a run of several kinds (more
// than one list with jobs) checks them all first with validate_jobs, so no kind writes
// a byte before another's bad job is refused.
void validate_if_several(const Plan& plan, KindSet kinds);

// `plan` with only its engine jobs (Plan::jobs) of the kinds in `kinds`: `plan` itself
// when it holds no others, else a copy in *storage (sources and sinks shared).
const Plan& with_engine_jobs(const Plan& plan, KindSet kinds, Plan* storage);

// Adds the statistics of one runner into a run's: bytes, chunks, seconds and draws
// summed; threads, chunk length and kernel those of the last runner that set them.
void add_stats(RunStats* total, const RunStats& part);

// The one order of a run's kinds on every backend: Gram, dot, engine (sum/copy/max/
// nearswap), task, DELLA, SCE, each through `runners` (the CPU's or the GPU's):
// grams(RunStats*) and dots(RunStats*) return their results, engine(const Plan&)
// (the plan's engine jobs of `kinds`), tasks(), dellas() and sces() their statistics.
// The engine runs (and reports its options) whenever `engine` says one of its kinds is
// selected; the others only when they hold jobs. Statistics are summed (add_stats).
template <class Runners>
PlanResults run_in_order(const Plan& plan, KindSet kinds, bool engine, const Runners& runners) {
  PlanResults out;
  if (kinds.has(JobKind::kGram) && !plan.grams.empty()) {
    RunStats stats;
    out.grams = runners.grams(&stats);
    out.ran_grams = true;
    add_stats(&out.stats, stats);
  }
  if (kinds.has(JobKind::kDot) && !plan.dots.empty()) {
    RunStats stats;
    out.dots = runners.dots(&stats);
    out.ran_dots = true;
    add_stats(&out.stats, stats);
  }
  if (engine) {
    Plan engine_only;
    add_stats(&out.stats, runners.engine(with_engine_jobs(plan, kinds, &engine_only)));
  }
  if (kinds.has(JobKind::kTaskProgram) && !plan.tasks.empty())
    add_stats(&out.stats, runners.tasks());
  if (kinds.has(JobKind::kDella) && !plan.dellas.empty()) add_stats(&out.stats, runners.dellas());
  if (kinds.has(JobKind::kSce) && !plan.sces.empty()) add_stats(&out.stats, runners.sces());
  return out;
}

// Runs the plan's jobs of the kinds in `kinds` on the CPU, in run_in_order's order.
// Thread counts are checked even when no job runs.
PlanResults run_jobs(const Plan& plan, KindSet kinds, const EngineOptions& options,
                     const ProgressFn& progress);

}  // namespace ladle
