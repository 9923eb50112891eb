// Host side of the merge methods on the CUDA backend (methods_cuda.h). A task job
// runs the CPU's passes (methods_cpu.cc), each one launch per chunk: histograms of
// the high, then the low 16 bits of |delta| (the rank thresholds: the k-th largest
// |delta| bit pattern, ties broken by index), tie counts per tile, L1 norms per tile,
// then the per-element program; a Gram job is one pass of per-tile fp64 sums. A
// chunk's inputs are staged once (pinned memory, one H2D copy) and stay on the device
// for every pass over it, so a tensor that fits one chunk is read once. Statistics
// come back to the host, where histograms are searched and per-tile sums added in
// tile order exactly as the CPU adds them.
#include "methods_cuda.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

#include "chunk_runner.h"
#include "common.h"
#include "kernels.h"
#include "method_kernels.h"
#include "method_kernels_cuda.h"
#include "method_stage_cuda.h"

namespace ladle {
namespace cuda {
namespace {

constexpr uint64_t kTile = kMethodTileElems;

// One bound of a model's rank window: rank r and, once searched, its threshold.
struct Bound {
  SelDesc desc;
  uint64_t rank = 0;
  uint64_t above = 0;                // elements in bins above desc.hi_bin
  std::vector<uint64_t> tie_prefix;  // per tile of the tensor: ties in earlier tiles

  void init(uint64_t r, uint64_t n) {
    rank = r;
    desc = SelDesc{};
    desc.none = r == 0;
    desc.all = r >= n;
    desc.active = !desc.none && !desc.all;
  }
  // Walks bins from the top down to the one holding the rank (from `cum` elements
  // above the first bin); returns the bin and sets `cum` to the elements above it.
  uint32_t find(const unsigned long long* hist, uint32_t n_bins, uint64_t* cum) const {
    for (uint32_t b = n_bins; b-- > 0;) {
      if (*cum + hist[b] > rank) return b;
      *cum += hist[b];
    }
    raise(ErrorKind::kValue, "internal: rank beyond histogram");
  }
  void pick_hi_bin(const unsigned long long* hist) {
    if (!desc.active) return;
    above = 0;
    desc.hi_bin = find(hist, kHiHistBins, &above);
  }
  void pick_threshold(const unsigned long long* hist) {
    if (!desc.active) return;
    uint64_t cum = above;
    uint32_t b = find(hist, kLoHistBins, &cum);
    desc.threshold = (desc.hi_bin << 16) | b;
    desc.ties_keep = rank - cum;
    desc.need_ties = desc.ties_keep > 0 && desc.ties_keep < hist[b];
  }
};

uint64_t dare_stream(uint64_t seed, uint64_t key, uint32_t model) {
  return mix64(mix64(mix64(seed) ^ key) ^ (static_cast<uint64_t>(model) + 1));
}

void validate_task(const Plan& plan, const TaskJob& job) {
  check_model_count(job.name, job.models.size());
  validate_task_job(plan, job);
}

std::vector<JobInput> task_inputs(const TaskJob& job) {
  std::vector<JobInput> inputs{job.base};
  for (const TaskModel& m : job.models) inputs.push_back(m.input);
  return inputs;
}

class TaskRunner : public MethodRunner<TaskRunner, TaskJob> {
 public:
  using MethodRunner::MethodRunner;

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    RunSize size = run_size(jobs_, task_inputs,
                            [](const TaskJob& job) { return selects_by_rank(job) ? 4 : 1; });
    uint32_t max_models = size.max_models;
    std::vector<StagedJob> staged = staged_jobs(jobs_, task_inputs);
    uint64_t state = 2ull * max_models * kLoHistBins * 8;
    chunk_elems_ = chunk_elems_for(staged_per_elem(staged), state, options_);
    uint64_t chunk_tiles = chunk_elems_ / kTile;
    StageBytes bytes = stage_bytes(staged, chunk_elems_);
    uint64_t n_counts = std::max<uint64_t>(2ull * max_models * kLoHistBins,
                                           2ull * max_models * chunk_tiles);
    stage_ = std::make_unique<Stage>(options_, bytes.in, bytes.out, n_counts,
                                     2ull * max_models * chunk_tiles, max_models);
    return run_jobs(progress, size.total_bytes, t0);
  }

 private:
  friend class MethodRunner<TaskRunner, TaskJob>;
  struct ModelState {
    Bound bound[2];  // lo, hi
    bool selects() const { return bound[0].desc.active || bound[1].desc.active; }
  };

  // Calls fn(first, n, chunk_tiles) for every chunk of job j with its inputs staged.
  template <class Fn>
  void for_each_chunk(size_t j, Progress* bar, RunStats* stats, Fn&& fn) {
    const TaskJob& job = jobs_[j];
    cuda::for_each_chunk(stage_.get(), plan_, job.name, task_inputs(job), j, job.n_elems,
                         chunk_elems_, bar, stats, fn);
  }

  // The launch of one pass over the staged chunk, with the job's settings.
  MethodLaunch launch_of(const TaskJob& job, uint32_t pass, uint64_t first, uint64_t n) const {
    MethodLaunch L;
    L.pass = pass;
    L.first_elem = first;
    L.n_elems = n;
    L.n_tiles = tiles_of(n);
    L.base = stage_->device_input(0);
    L.base_dtype = static_cast<uint32_t>(job.base.dtype);
    L.sparsify = job.sparsify == Sparsify::kRandom ? kRandomDraw
                 : selects_by_rank(job)                 ? kRankWindow
                                                        : kKeepAll;
    L.consensus = static_cast<uint32_t>(job.consensus == Consensus::kSum     ? MixConsensus::kSum
                                        : job.consensus == Consensus::kCount ? MixConsensus::kCount
                                                                             : MixConsensus::kNone);
    L.normalize = job.normalize;
    L.by_density = job.rescale == Rescale::kDensity;
    L.lambda = job.lambda;
    float weight_sum = 0.0f;  // the unmasked divisor: weights summed in model order
    for (const TaskModel& m : job.models) weight_sum = weight_sum + m.input.weight;
    L.plain_divisor = mix_plain_divisor(weight_sum);
    L.out_dtype = static_cast<uint32_t>(job.out_dtype);
    return L;
  }

  std::vector<ModelDesc> model_table(const TaskJob& job) const {
    std::vector<ModelDesc> table(job.models.size());
    for (size_t k = 0; k < job.models.size(); ++k) {
      const TaskModel& m = job.models[k];
      ModelDesc& d = table[k];
      d.ptr = stage_->device_input(k + 1);
      d.dtype = static_cast<uint32_t>(m.input.dtype);
      d.selects = states_[k].selects();
      d.weight = m.input.weight;
      d.density = m.density;
      d.stream = dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(k));
      d.l1_scaled = l1_scaled_[k];
      d.l1_scale = l1_scale_[k];
      d.sel[0] = states_[k].bound[0].desc;
      d.sel[1] = states_[k].bound[1].desc;
    }
    return table;
  }

  // The tie prefixes of the chunk's tiles, [(2k + s) * chunk_tiles + t].
  Counts chunk_prefix(uint64_t first, uint64_t n_tiles) const {
    Counts prefix(2 * states_.size() * n_tiles, 0);
    for (size_t k = 0; k < states_.size(); ++k)
      for (int s = 0; s < 2; ++s) {
        const Bound& b = states_[k].bound[s];
        if (!b.desc.need_ties) continue;
        std::copy_n(b.tie_prefix.begin() + first / kTile, n_tiles,
                    prefix.begin() + (2 * k + s) * n_tiles);
      }
    return prefix;
  }

  void run_job(size_t j, Progress* bar, RunStats* stats) {
    const TaskJob& job = jobs_[j];
    size_t n_models = job.models.size();
    states_.assign(n_models, ModelState{});
    l1_scaled_.assign(n_models, 0);
    l1_scale_.assign(n_models, 1.0f);
    bool selecting = false;
    const bool by_rank = selects_by_rank(job);
    for (size_t k = 0; k < n_models; ++k) {
      ModelState& ms = states_[k];
      ms.bound[0].init(by_rank ? job.models[k].rank_lo : 0, job.n_elems);
      ms.bound[1].init(by_rank ? job.models[k].rank_hi : job.n_elems, job.n_elems);
      selecting = selecting || ms.selects();
    }
    if (selecting) find_thresholds(j, bar, stats);
    if (job.rescale == Rescale::kL1 && job.sparsify != Sparsify::kNone) l1_norms(j, bar, stats);
    apply(j, bar, stats);
  }

  void find_thresholds(size_t j, Progress* bar, RunStats* stats) {
    const TaskJob& job = jobs_[j];
    size_t n_models = job.models.size();
    Counts hist;
    // Pass 1: the high 16 bits of |delta|, one histogram per selecting model.
    uint64_t n_hi = n_models * kHiHistBins;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t) {
      MethodLaunch L = launch_of(job, kPassHistHi, first, n);
      stage_->launch(&L, model_table(job), first == 0 ? n_hi : 0, nullptr);
    });
    stage_->counts_to(&hist, n_hi);
    for (size_t k = 0; k < n_models; ++k)
      for (Bound& b : states_[k].bound) b.pick_hi_bin(hist.data() + k * kHiHistBins);
    // Pass 2: the low 16 bits inside each bound's high bin.
    uint64_t n_lo = 2 * n_models * kLoHistBins;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t) {
      MethodLaunch L = launch_of(job, kPassHistLo, first, n);
      stage_->launch(&L, model_table(job), first == 0 ? n_lo : 0, nullptr);
    });
    stage_->counts_to(&hist, n_lo);
    bool any_ties = false;
    for (size_t k = 0; k < n_models; ++k)
      for (int s = 0; s < 2; ++s) {
        Bound& b = states_[k].bound[s];
        b.pick_threshold(hist.data() + (2 * k + s) * kLoHistBins);
        if (b.desc.need_ties) b.tie_prefix.assign(tiles_of(job.n_elems), 0);
        any_ties = any_ties || b.desc.need_ties;
      }
    // Pass 3: elements equal to the threshold per tile, when only some of them are kept.
    if (!any_ties) return;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t n_tiles) {
      MethodLaunch L = launch_of(job, kPassTies, first, n);
      stage_->launch(&L, model_table(job), 2 * n_models * n_tiles, nullptr);
      stage_->counts_to(&hist, 2 * n_models * n_tiles);
      for (size_t k = 0; k < n_models; ++k)
        for (int s = 0; s < 2; ++s)
          if (states_[k].bound[s].desc.need_ties)
            std::copy_n(hist.begin() + (2 * k + s) * n_tiles, n_tiles,
                        states_[k].bound[s].tie_prefix.begin() + first / kTile);
    });
    for (ModelState& ms : states_)
      for (Bound& b : ms.bound) {
        uint64_t before = 0;
        for (uint64_t& c : b.tie_prefix) {
          uint64_t here = c;
          c = before;
          before += here;
        }
      }
  }

  // Rescale::kL1: per model, |delta|_1 / |kept|_1 unless either is below 1e-7, the
  // per-tile sums added in tile order as the CPU adds them.
  void l1_norms(size_t j, Progress* bar, RunStats* stats) {
    const TaskJob& job = jobs_[j];
    size_t n_models = job.models.size();
    std::vector<double> before(n_models, 0.0), after(n_models, 0.0), sums;
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t n_tiles) {
      MethodLaunch L = launch_of(job, kPassL1, first, n);
      Counts prefix = chunk_prefix(first, n_tiles);
      stage_->launch(&L, model_table(job), 0, &prefix);
      stage_->sums_to(&sums, 2 * n_models * n_tiles);
      for (size_t k = 0; k < n_models; ++k)
        for (uint64_t t = 0; t < n_tiles; ++t) {
          before[k] += sums[(2 * k) * n_tiles + t];
          after[k] += sums[(2 * k + 1) * n_tiles + t];
        }
    });
    for (size_t k = 0; k < n_models; ++k) {
      l1_scaled_[k] = !(before[k] < 1e-7 || after[k] < 1e-7);
      l1_scale_[k] = static_cast<float>(before[k] / after[k]);
    }
  }

  void apply(size_t j, Progress* bar, RunStats* stats) {
    const TaskJob& job = jobs_[j];
    std::vector<JobInput> inputs = task_inputs(job);
    for_each_chunk(j, bar, stats, [&](uint64_t first, uint64_t n, uint64_t n_tiles) {
      if (options_.check_finite)
        for (size_t i = 0; i < inputs.size(); ++i) check_input(job, inputs[i], i, first, n);
      MethodLaunch L = launch_of(job, kPassApply, first, n);
      Counts prefix = chunk_prefix(first, n_tiles);
      stage_->launch(&L, model_table(job), 0, &prefix);
      stage_->write_out(plan_.sinks[job.sink], job.name, job.out_dtype, job.out_offset, first, n,
                        options_.check_finite, stats);
    });
  }

  void check_input(const TaskJob& job, const JobInput& in, size_t i, uint64_t first,
                   uint64_t n) const {
    size_t bad = find_nonfinite(in.dtype, stage_->host_input(i), n);
    LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
                "%s: tensor '%s': non-finite value (NaN or Inf) at element %llu",
                plan_.sources[in.source].label.c_str(), job.name.c_str(),
                (unsigned long long)(first + bad));
  }

  std::vector<ModelState> states_;
  std::vector<uint8_t> l1_scaled_;
  std::vector<float> l1_scale_;
};

}  // namespace

RunStats run_task_jobs(const Plan& plan, const std::vector<TaskJob>& jobs, const Options& options,
                       const ProgressFn& progress) {
  for (const TaskJob& job : jobs) validate_task(plan, job);
  TaskRunner runner(plan, jobs, options);
  return runner.run(progress);
}

std::vector<std::vector<double>> run_gram_jobs(const Plan& plan, const std::vector<GramJob>& jobs,
                                               const Options& options, const ProgressFn& progress,
                                               RunStats* stats) {
  auto t0 = std::chrono::steady_clock::now();
  uint64_t per_elem = 1, total = 0, max_pairs = 1;
  uint32_t max_inputs = 1;
  std::vector<StagedJob> staged;  // inputs only: a reduction writes no output
  for (const GramJob& job : jobs) {
    validate_gram_job(plan, job);
    staged.push_back({job.inputs, DType::kF32, job.n_elems});
    per_elem = std::max(per_elem, read_n_bytes(job.inputs, 1));
    total += read_n_bytes(job.inputs, job.n_elems);
    uint64_t m = job.inputs.size() - (job.base >= 0 ? 1 : 0);
    max_pairs = std::max(max_pairs, m * (m + 1) / 2);
    max_inputs = std::max<uint32_t>(max_inputs, static_cast<uint32_t>(job.inputs.size()));
  }
  uint64_t chunk = chunk_elems_for(per_elem, 0, options), chunk_tiles = chunk / kTile;
  uint64_t in_bytes = stage_bytes(staged, chunk).in;
  RunStats run_stats;
  std::vector<std::vector<double>> result(jobs.size());
  {
    Stage stage(options, in_bytes, 1, 1, max_pairs * chunk_tiles, max_inputs);
    Progress bar(progress, total);
    std::vector<double> sums;
    for (size_t j = 0; j < jobs.size(); ++j) {
      const GramJob& job = jobs[j];
      size_t m = job.inputs.size() - (job.base >= 0 ? 1 : 0), n_pairs = m * (m + 1) / 2;
      std::vector<double> pair_sums(n_pairs, 0.0);
      for (uint64_t first = 0; first < job.n_elems; first += chunk) {
        uint64_t n = std::min(chunk, job.n_elems - first), n_tiles = tiles_of(n);
        run_stats.bytes_read += stage.stage(plan, job.name, job.inputs, j, first, n);
        MethodLaunch L;
        L.pass = kPassGram;
        L.first_elem = first;
        L.n_elems = n;
        L.n_tiles = n_tiles;
        std::vector<ModelDesc> vectors;  // the inputs in order, the base left out
        for (size_t a = 0; a < job.inputs.size(); ++a) {
          if (static_cast<int32_t>(a) == job.base) {
            L.base = stage.device_input(a);
            L.base_dtype = static_cast<uint32_t>(job.inputs[a].dtype);
            continue;
          }
          ModelDesc d;
          d.ptr = stage.device_input(a);
          d.dtype = static_cast<uint32_t>(job.inputs[a].dtype);
          vectors.push_back(d);
        }
        stage.launch(&L, vectors, 0, nullptr);
        stage.sums_to(&sums, n_pairs * n_tiles);
        for (size_t p = 0; p < n_pairs; ++p)
          for (uint64_t t = 0; t < n_tiles; ++t) pair_sums[p] += sums[p * n_tiles + t];
        ++run_stats.n_chunks;
        bar.add(read_n_bytes(job.inputs, n));
      }
      std::vector<double>& gram = result[j];
      gram.assign(m * m, 0.0);
      size_t pair = 0;
      for (size_t a = 0; a < m; ++a)
        for (size_t b = a; b < m; ++b, ++pair) gram[a * m + b] = gram[b * m + a] = pair_sums[pair];
    }
    run_stats.kernel = stage.name();
  }
  if (stats) {
    run_stats.chunk_elems = chunk;
    run_stats.threads = 1;
    run_stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    *stats = run_stats;
  }
  return result;
}

}  // namespace cuda
}  // namespace ladle
