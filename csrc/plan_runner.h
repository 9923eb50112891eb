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

// Runs the plan's Gram jobs, when `kinds` selects them, with `run_grams` (RunStats*
// -> one Gram matrix per job: the CPU's runner or the GPU's) into `out`.
template <class RunGrams>
void run_selected_grams(const Plan& plan, KindSet kinds, PlanResults* out, RunGrams&& run_grams) {
  if (!kinds.has(JobKind::kGram) || plan.grams.empty()) return;
  RunStats stats;
  out->grams = run_grams(&stats);
  out->ran_grams = true;
  add_stats(&out->stats, stats);
}

// Runs the plan's jobs of the kinds in `kinds` on the CPU, in the order Gram, dot,
// engine (sum/copy/max/nearswap), task, DELLA, SCE. Thread counts are checked even
// when no job runs; the engine runs (and reports its options) whenever one of its
// kinds is selected, the others only when they hold jobs.
PlanResults run_jobs(const Plan& plan, KindSet kinds, const EngineOptions& options,
                     const ProgressFn& progress);

}  // namespace ladle
