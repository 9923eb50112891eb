// DELLA on the CUDA backend (methods_cuda.h): the CPU runner's passes (method_della.cc)
// over chunks of whole L1 units (whole rank blocks). Per chunk, a rank pass writes
// each pruned model's keep probability per element (the ascending rank of |delta| in
// its rank group, ties by index, through della_keep_probability: the CPU's code);
// then, for an L1 rescale, the task's L1 chains over each unit in index order, added
// unit by unit on the host as the CPU adds them; then the task's apply pass with
// DARE's draw against those probabilities. The bytes are run_della_jobs'.
#include <algorithm>
#include <chrono>
#include <memory>

#include "chunk_runner.h"
#include "common.h"
#include "method_della.h"
#include "method_stage_cuda.h"
#include "methods_cuda.h"

namespace ladle {
namespace cuda {
namespace {

std::vector<JobInput> della_inputs(const DellaJob& job) {
  std::vector<JobInput> inputs{job.base};
  for (const DellaModel& m : job.models) inputs.push_back(m.input);
  return inputs;
}

bool any_magprune(const DellaJob& job) {
  for (const DellaModel& m : job.models)
    if (della_prune(m) == DellaPrune::kMagPrune) return true;
  return false;
}

class DellaRunner : public MethodRunner<DellaRunner, DellaJob> {
 public:
  using MethodRunner::MethodRunner;

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    RunSize size = run_size(jobs_, della_inputs,
                            [](const DellaJob& job) { return della_needs_norms(job) ? 2 : 1; });
    uint32_t max_models = size.max_models;
    std::vector<StagedJob> staged = staged_jobs(jobs_, della_inputs);
    // Per element of a chunk: the staged inputs and output, and a keep probability
    // per model.
    chunk_elems_ = chunk_elems_for(staged_per_elem(staged) + 4ull * max_models, 0, options_);
    StageBytes bytes;
    uint64_t probs = 0, sums = 1;
    for (size_t j = 0; j < jobs_.size(); ++j) {
      uint64_t chunk = job_chunk(jobs_[j]), m = jobs_[j].models.size();
      StageBytes b = stage_bytes({staged[j]}, chunk);
      bytes.in = std::max(bytes.in, b.in);
      bytes.out = std::max(bytes.out, b.out);
      probs = std::max(probs, std::min(chunk, jobs_[j].n_elems) * m * 4);
      sums = std::max(sums, 2 * m * (chunk / della_unit_elems(jobs_[j])));
    }
    stage_ = std::make_unique<Stage>(options_, bytes.in, bytes.out, 1, sums, max_models, probs);
    return run_jobs(progress, size.total_bytes, t0);
  }

 private:
  friend class MethodRunner<DellaRunner, DellaJob>;
  // Whole units, about the budget's chunk length (one unit at least).
  uint64_t job_chunk(const DellaJob& job) const {
    uint64_t unit = della_unit_elems(job);
    return std::max<uint64_t>(1, chunk_elems_ / unit) * unit;
  }

  void run_job(size_t j, Progress* bar, RunStats* stats) {
    const DellaJob& job = jobs_[j];
    size_t m = job.models.size();
    models_.assign(m, ModelDesc{});
    for (size_t k = 0; k < m; ++k) {
      const DellaModel& dm = job.models[k];
      ModelDesc& d = models_[k];
      d.dtype = static_cast<uint32_t>(dm.input.dtype);
      d.selects = della_prune(dm) == DellaPrune::kMagPrune;
      d.weight = dm.input.weight;
      d.density = della_prune(dm) == DellaPrune::kKeepAll ? 1.0f : 0.0f;  // when !selects
      d.floor = dm.floor;
      d.epsilon = dm.epsilon;
      d.stream = dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(k));
    }
    ranked_first_ = ~0ull;
    if (della_needs_norms(job)) l1_norms(j, bar, stats);
    apply(j, bar, stats);
  }

  // Pass 1: per pruned model, |delta|_1 and |kept delta|_1 per unit, added in order.
  void l1_norms(size_t j, Progress* bar, RunStats* stats) {
    const DellaJob& job = jobs_[j];
    size_t m = job.models.size();
    uint64_t unit = della_unit_elems(job);
    std::vector<double> before(m, 0.0), after(m, 0.0), sums;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n) {
      rank(job, first, n);
      MethodLaunch L = launch_of(job, kPassL1, first, n);
      L.chain_elems = unit;
      L.n_tiles = (n + unit - 1) / unit;
      stage_->launch(&L, models_, 0, nullptr);
      stage_->sums_to(&sums, 2 * m * L.n_tiles);
      for (size_t k = 0; k < m; ++k)
        for (uint64_t u = 0; u < L.n_tiles; ++u) {
          before[k] += sums[2 * k * L.n_tiles + u];
          after[k] += sums[(2 * k + 1) * L.n_tiles + u];
        }
    });
    for (size_t k = 0; k < m; ++k)
      if (models_[k].selects)
        models_[k].l1_scaled = della_l1_scale(before[k], after[k], &models_[k].l1_scale);
  }

  // Pass 2: the per-element program; check_finite checks rank block by rank block,
  // the inputs then the output, in the CPU's order.
  void apply(size_t j, Progress* bar, RunStats* stats) {
    const DellaJob& job = jobs_[j];
    std::vector<JobInput> inputs = della_inputs(job);
    const Sink& sink = plan_.sinks[job.sink];
    uint64_t block = job.group_len * job.group_stride, out_size = item_n_bytes(job.out_dtype);
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n) {
      rank(job, first, n);
      MethodLaunch L = launch_of(job, kPassApply, first, n);
      stage_->launch(&L, models_, 0, nullptr);
      stage_->write_out(sink, job.name, job.out_dtype, job.out_offset, first, n,
                        options_.check_finite, stats, [&](const uint8_t* out) {
                          for (uint64_t b = 0; b < n; b += block) {
                            for (const JobInput& in : inputs)
                              check_finite_input(plan_, job.name, in, first + b, block);
                            check_finite_output(sink, job.name, job.out_dtype,
                                                out + b * out_size, block, first + b);
                          }
                        });
    });
  }

  template <class Fn>
  void for_each_chunk(size_t j, Progress* bar, RunStats* stats, Fn&& fn) {
    const DellaJob& job = jobs_[j];
    cuda::for_each_chunk(stage_.get(), plan_, job.name, della_inputs(job), j, job.n_elems,
                         job_chunk(job), bar, stats,
                         [&](uint64_t first, uint64_t n, uint64_t) { fn(first, n); });
  }

  // The keep probabilities of the staged chunk, unless they are those of this chunk
  // already (a tensor of one chunk is ranked once).
  void rank(const DellaJob& job, uint64_t first, uint64_t n) {
    if (!any_magprune(job) || ranked_first_ == first) return;
    MethodLaunch L = launch_of(job, kPassDellaRank, first, n);
    stage_->launch(&L, models_, 0, nullptr);
    ranked_first_ = first;
  }

  MethodLaunch launch_of(const DellaJob& job, uint32_t pass, uint64_t first, uint64_t n) {
    for (size_t k = 0; k < models_.size(); ++k) models_[k].ptr = stage_->device_input(k + 1);
    MethodLaunch L;
    L.pass = pass;
    L.first_elem = first;
    L.n_elems = n;
    L.n_tiles = tiles_of(n);
    L.base = stage_->device_input(0);
    L.base_dtype = static_cast<uint32_t>(job.base.dtype);
    L.sparsify = kProbDraw;
    L.consensus = static_cast<uint32_t>(job.elect_sign ? MixConsensus::kSum : MixConsensus::kNone);
    L.normalize = job.normalize;
    L.by_density = job.rescale == DellaRescale::kProbability;
    L.lambda = job.lambda;
    float weight_sum = 0.0f;  // the unmasked divisor: weights summed in model order
    for (const DellaModel& m : job.models) weight_sum = weight_sum + m.input.weight;
    L.plain_divisor = mix_plain_divisor(weight_sum);
    L.out_dtype = static_cast<uint32_t>(job.out_dtype);
    L.probs = static_cast<float*>(stage_->device_scratch());
    L.group_len = job.group_len;
    L.group_stride = job.group_stride;
    return L;
  }

  // The tensor being run.
  std::vector<ModelDesc> models_;
  uint64_t ranked_first_ = ~0ull;  // the chunk whose keep probabilities are on the device
};

}  // namespace

RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const Options& options, const ProgressFn& progress) {
  for (const DellaJob& job : jobs) {
    check_model_count(job.name, job.models.size());
    validate_della_job(plan, job);
  }
  for (const DellaJob& job : jobs) check_della_block_fits(job, options.memory_budget);
  DellaRunner runner(plan, jobs, options);
  return runner.run(progress);
}

}  // namespace cuda
}  // namespace ladle
