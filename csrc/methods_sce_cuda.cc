// SCE on the CUDA backend (methods_cuda.h): the CPU runner's passes (method_sce.cc),
// each one launch per chunk of whole tiles: the variance histograms (high 16 bits and
// the nonzero count, then the low 16 bits inside the chosen bin), the tie counts per
// tile when only some variances equal to the threshold are kept, the fp64 sums of
// squares of the kept deltas per tile and model, then the per-element program. The
// threshold search and the model weights are the CPU's own code (SceSelection,
// sce_model_weights in method_sce.h), the per-element formulas too (method_sce_elems.h,
// run by the kernels), so the bytes are run_sce_jobs'.
#include <algorithm>
#include <chrono>
#include <memory>

#include "chunk_runner.h"
#include "common.h"
#include "method_sce.h"
#include "method_stage_cuda.h"
#include "methods_cuda.h"

namespace ladle {
namespace cuda {
namespace {

constexpr uint64_t kTile = kMethodTileElems;
static_assert(kSceHiBins == kHiHistBins && kSceLoBins == kLoHistBins,
              "SCE's histograms have the task passes' bins");

std::vector<JobInput> sce_inputs(const SceJob& job) {
  std::vector<JobInput> inputs{job.base};
  inputs.insert(inputs.end(), job.models.begin(), job.models.end());
  return inputs;
}

class SceRunner : public MethodRunner<SceRunner, SceJob> {
 public:
  using MethodRunner::MethodRunner;

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    RunSize size = run_size(jobs_, sce_inputs,
                            [](const SceJob& job) { return sce_selects(job) ? 5 : 2; });
    uint32_t max_models = size.max_models;
    uint64_t max_tiles = 1;
    for (const SceJob& job : jobs_) max_tiles = std::max(max_tiles, job.n_elems / kTile + 1);
    std::vector<StagedJob> staged = staged_jobs(jobs_, sce_inputs);
    // Held beside the chunks: the tensor's tie prefix and sums of squares per tile, the
    // histograms on the host.
    uint64_t state = max_tiles * 8 * (max_models + 1) + 2 * kLoHistBins * 8;
    chunk_elems_ = chunk_elems_for(staged_per_elem(staged), state, options_);
    uint64_t chunk_tiles = chunk_elems_ / kTile;
    StageBytes bytes = stage_bytes(staged, chunk_elems_);
    stage_ = std::make_unique<Stage>(options_, bytes.in, bytes.out,
                                     std::max<uint64_t>(kLoHistBins, chunk_tiles),
                                     max_models * chunk_tiles, max_models);
    return run_jobs(progress, size.total_bytes, t0);
  }

 private:
  friend class MethodRunner<SceRunner, SceJob>;
  void run_job(size_t j, Progress* bar, RunStats* stats) {
    const SceJob& job = jobs_[j];
    inputs_ = sce_inputs(job);
    inputs_checked_ = !options_.check_finite;
    weights_.assign(job.models.size(), 1.0f);
    uint64_t read = read_n_bytes(inputs_, job.n_elems);
    uint64_t n_tiles = job.n_elems / kTile + 1;  // the CPU's layout of per-tile values
    top_ = SceSelection(job);
    if (sce_selects(job)) select(j, bar, stats, read, n_tiles);
    else bar->add(3 * read);
    // Pass 4: the sums of squares of every model's kept deltas, per tile.
    size_t m = job.models.size();
    std::vector<double> squares(m * n_tiles, 0.0), sums;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t chunk_tiles) {
      launch(job, kPassSceSquares, first, n, 0);
      stage_->sums_to(&sums, m * chunk_tiles);
      for (size_t k = 0; k < m; ++k)
        std::copy_n(sums.begin() + k * chunk_tiles, chunk_tiles,
                    squares.begin() + k * n_tiles + first / kTile);
    });
    weights_ = sce_model_weights(squares, m, n_tiles, job.n_elems);
    apply(j, bar, stats);
  }

  // Passes 1-3: the threshold of the top-K variances, and the ties before each tile.
  void select(size_t j, Progress* bar, RunStats* stats, uint64_t read, uint64_t n_tiles) {
    const SceJob& job = jobs_[j];
    Counts counts;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t) {
      launch(job, kPassSceHistHi, first, n, first == 0 ? kHiHistBins + 1 : 0);
    });
    stage_->counts_to(&counts, kHiHistBins + 1);
    std::vector<uint64_t> hist(counts.begin(), counts.begin() + kHiHistBins);
    if (!top_.pick_hi_bin(hist, counts[kHiHistBins], job.select_topk)) {
      bar->add(2 * read);
      return;
    }
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t) {
      launch(job, kPassSceHistLo, first, n, first == 0 ? kLoHistBins : 0);
    });
    stage_->counts_to(&counts, kLoHistBins);
    top_.pick_threshold(std::vector<uint64_t>(counts.begin(), counts.end()), n_tiles);
    if (!top_.need_ties) {
      bar->add(read);
      return;
    }
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t chunk_tiles) {
      launch(job, kPassSceTies, first, n, chunk_tiles);
      stage_->counts_to(&counts, chunk_tiles);
      std::copy(counts.begin(), counts.end(), top_.tie_prefix.begin() + first / kTile);
    });
    top_.finish_ties();
  }

  void apply(size_t j, Progress* bar, RunStats* stats) {
    const SceJob& job = jobs_[j];
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t) {
      launch(job, kPassSceApply, first, n, 0);
      stage_->write_out(plan_.sinks[job.sink], job.name, job.out_dtype, job.out_offset, first, n,
                        options_.check_finite, stats);
    });
  }

  // Calls fn(first, n, chunk_tiles) for every chunk of job j with its inputs staged;
  // the first pass over a job checks its inputs (check_finite) in the CPU's order.
  template <class Fn>
  void for_each_chunk(size_t j, Progress* bar, RunStats* stats, Fn&& fn) {
    const SceJob& job = jobs_[j];
    cuda::for_each_chunk(stage_.get(), plan_, job.name, inputs_, j, job.n_elems, chunk_elems_,
                         bar, stats, [&](uint64_t first, uint64_t n, uint64_t chunk_tiles) {
                           if (!inputs_checked_) check_inputs(job, first, n);
                           fn(first, n, chunk_tiles);
                         });
    inputs_checked_ = true;
  }

  // Tile by tile, the base then each model, as the CPU's load_tile checks them.
  void check_inputs(const SceJob& job, uint64_t first, uint64_t n) const {
    for (uint64_t t = 0; t < n; t += kTile)
      for (const JobInput& in : inputs_)
        check_finite_input(plan_, job.name, in, first + t, std::min(kTile, n - t));
  }

  // One pass over the staged chunk; `n_counts` counters are zeroed first.
  void launch(const SceJob& job, uint32_t pass, uint64_t first, uint64_t n, uint64_t n_counts) {
    MethodLaunch L;
    L.pass = pass;
    L.first_elem = first;
    L.n_elems = n;
    L.n_tiles = tiles_of(n);
    L.base = stage_->device_input(0);
    L.base_dtype = static_cast<uint32_t>(job.base.dtype);
    L.out_dtype = static_cast<uint32_t>(job.out_dtype);
    L.select.all = top_.all;
    L.select.none = top_.none;
    L.select.need_ties = top_.need_ties;
    L.select.hi_bin = top_.hi_bin;
    L.select.threshold = top_.threshold;
    L.select.ties_keep = top_.ties_keep;
    std::vector<ModelDesc> models(job.models.size());
    for (size_t k = 0; k < models.size(); ++k) {
      models[k].ptr = stage_->device_input(k + 1);
      models[k].dtype = static_cast<uint32_t>(job.models[k].dtype);
      models[k].weight = weights_[k];
    }
    Counts prefix(L.n_tiles, 0);  // the ties before each of the chunk's tiles
    if (top_.need_ties)
      std::copy_n(top_.tie_prefix.begin() + first / kTile, L.n_tiles, prefix.begin());
    stage_->launch(&L, models, n_counts, &prefix);
  }

  // The tensor being run.
  std::vector<JobInput> inputs_;
  bool inputs_checked_ = false;
  SceSelection top_;
  std::vector<float> weights_;
};

}  // namespace

RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs, const Options& options,
                      const ProgressFn& progress) {
  for (const SceJob& job : jobs) {
    check_model_count(job.name, job.models.size());
    validate_sce_job(plan, job);
  }
  SceRunner runner(plan, jobs, options);
  return runner.run(progress);
}

}  // namespace cuda
}  // namespace ladle
