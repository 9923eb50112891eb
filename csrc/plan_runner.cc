#include "plan_runner.h"

#include <algorithm>

#include "chunk_runner.h"
#include "common.h"
#include "method_della.h"
#include "method_sce.h"
#include "methods.h"
#include "reduce.h"

namespace ladle {

namespace {

bool any_engine_kind(KindSet kinds) {
  for (JobKind k : kAllJobKinds)
    if (is_engine_kind(k) && kinds.has(k)) return true;
  return false;
}

}  // namespace

size_t count_jobs(const Plan& plan, JobKind kind) {
  switch (kind) {
    case JobKind::kTaskProgram: return plan.tasks.size();
    case JobKind::kGram: return plan.grams.size();
    case JobKind::kDot: return plan.dots.size();
    case JobKind::kDella: return plan.dellas.size();
    case JobKind::kSce: return plan.sces.size();
    default:
      return static_cast<size_t>(std::count_if(plan.jobs.begin(), plan.jobs.end(),
                                               [&](const Job& j) { return job_kind(j) == kind; }));
  }
}

void clear_jobs(Plan* plan, KindSet kinds) {
  if (kinds.has(JobKind::kTaskProgram)) plan->tasks.clear();
  if (kinds.has(JobKind::kGram)) plan->grams.clear();
  if (kinds.has(JobKind::kDot)) plan->dots.clear();
  if (kinds.has(JobKind::kDella)) plan->dellas.clear();
  if (kinds.has(JobKind::kSce)) plan->sces.clear();
  auto& jobs = plan->jobs;
  jobs.erase(std::remove_if(jobs.begin(), jobs.end(),
                            [&](const Job& j) { return kinds.has(job_kind(j)); }),
             jobs.end());
}

void validate_jobs(const Plan& plan, KindSet kinds) {
  Plan engine_only;
  if (any_engine_kind(kinds)) validate_plan(with_engine_jobs(plan, kinds, &engine_only));
  if (kinds.has(JobKind::kTaskProgram))
    for (const TaskJob& job : plan.tasks) validate_task_job(plan, job);
  if (kinds.has(JobKind::kGram))
    for (const GramJob& job : plan.grams) validate_gram_job(plan, job);
  if (kinds.has(JobKind::kDot))
    for (const DotJob& job : plan.dots) validate_dot_job(plan, job);
  if (kinds.has(JobKind::kDella))
    for (const DellaJob& job : plan.dellas) validate_della_job(plan, job);
  if (kinds.has(JobKind::kSce))
    for (const SceJob& job : plan.sces) validate_sce_job(plan, job);
}

const Plan& with_engine_jobs(const Plan& plan, KindSet kinds, Plan* storage) {
  bool all = std::all_of(plan.jobs.begin(), plan.jobs.end(),
                         [&](const Job& j) { return kinds.has(job_kind(j)); });
  bool only_engine = plan.tasks.empty() && plan.grams.empty() && plan.dots.empty() &&
                     plan.dellas.empty() && plan.sces.empty();
  if (all && only_engine) return plan;
  storage->sources = plan.sources;
  storage->sinks = plan.sinks;
  storage->jobs.clear();
  for (const Job& j : plan.jobs)
    if (kinds.has(job_kind(j))) storage->jobs.push_back(j);
  return *storage;
}

void add_stats(RunStats* total, const RunStats& part) {
  total->bytes_read += part.bytes_read;
  total->bytes_written += part.bytes_written;
  total->n_chunks += part.n_chunks;
  total->seconds += part.seconds;
  total->rng_draws += part.rng_draws;
  total->ranks_sampled += part.ranks_sampled;
  total->ranks_histogrammed += part.ranks_histogrammed;
  total->fp8_two_pass += part.fp8_two_pass;
  total->host_sums += part.host_sums;
  if (part.threads) total->threads = part.threads;
  if (part.chunk_elems) total->chunk_elems = part.chunk_elems;
  if (part.kernel && *part.kernel) total->kernel = part.kernel;
}

void validate_if_several(const Plan& plan, KindSet kinds) {
  int n_lists = 0;  // lists with jobs to run (the engine's one list)
  size_t n_engine_jobs = 0;
  for (JobKind k : kAllJobKinds) {
    if (!kinds.has(k)) continue;
    size_t n = count_jobs(plan, k);
    if (is_engine_kind(k)) n_engine_jobs += n;
    else n_lists += n > 0;
  }
  n_lists += n_engine_jobs > 0;
  if (n_lists > 1) validate_jobs(plan, kinds);
}

namespace {

// The CPU's runner of each kind, for run_in_order.
struct CpuRunners {
  const Plan& plan;
  const EngineOptions& options;
  const ProgressFn& progress;

  std::vector<std::vector<double>> grams(RunStats* stats) const {
    return run_gram_jobs(plan, plan.grams, options, progress, stats);
  }
  std::vector<std::vector<double>> dots(RunStats*) const {  // no statistics of their own
    DotOptions dot;
    dot.threads = options.threads;
    dot.memory_budget = options.memory_budget;
    dot.chunk_elems = options.chunk_elems;
    return dot_products(plan, plan.dots, dot);
  }
  RunStats engine(const Plan& engine_jobs) const { return run_plan(engine_jobs, options, progress); }
  RunStats tasks() const { return run_task_jobs(plan, plan.tasks, options, progress); }
  RunStats dellas() const { return run_della_jobs(plan, plan.dellas, options, progress); }
  RunStats sces() const { return run_sce_jobs(plan, plan.sces, options, progress); }
};

}  // namespace

PlanResults run_jobs(const Plan& plan, KindSet kinds, const EngineOptions& options,
                     const ProgressFn& progress) {
  resolve_threads(options.threads);  // a bad count is refused even with nothing to run
  validate_if_several(plan, kinds);
  return run_in_order(plan, kinds, any_engine_kind(kinds), CpuRunners{plan, options, progress});
}

}  // namespace ladle
