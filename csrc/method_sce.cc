// CPU runner of the SCE jobs (method_sce.h), one tensor at a time, in streamed passes
// over whole 2048-element tiles: (1) a histogram of the high 16 bits of the per-element
// variance and the count of nonzero variances, (2) the low 16 bits inside the bin that
// holds rank k (the exact threshold), (3) when only some elements equal to it are
// selected, their count per tile, (4) the fp64 sums of squares of the selected deltas
// per model and tile, (5) the per-element program. Every order-sensitive quantity is
// kept per tile and combined in index order, so threads and chunking change no bit.
#include "method_sce.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>

#include "chunk_runner.h"
#include "common.h"
#include "kernels.h"
#include "method_kernels.h"
#include "method_sce_elems.h"

namespace ladle {

namespace {

// Walks `hist` from its top bin down, from `*cum` elements above it, to the bin that
// holds the k-th largest element (1-based); *cum becomes the elements above that bin.
uint32_t bin_of_kth(const std::vector<uint64_t>& hist, uint64_t k, uint64_t* cum) {
  for (uint32_t b = static_cast<uint32_t>(hist.size()); b-- > 0;) {
    if (*cum + hist[b] >= k) return b;
    *cum += hist[b];
  }
  raise(ErrorKind::kValue, "internal: sce rank beyond histogram");
}

}  // namespace

bool SceSelection::pick_hi_bin(const std::vector<uint64_t>& hist, uint64_t nonzero,
                               double select_topk) {
  k_ = static_cast<uint64_t>(static_cast<float>(nonzero) * static_cast<float>(select_topk));
  all = false;
  none = k_ == 0;
  if (none) return false;
  above_ = 0;
  hi_bin = bin_of_kth(hist, k_, &above_);
  return true;
}

void SceSelection::pick_threshold(const std::vector<uint64_t>& hist, uint64_t n_tiles) {
  uint64_t cum = above_;
  uint32_t b = bin_of_kth(hist, k_, &cum);
  threshold = (hi_bin << 16) | b;
  ties_keep = k_ - cum;
  need_ties = ties_keep < hist[b];
  tie_prefix.assign(n_tiles, 0);
}

void SceSelection::finish_ties() {
  uint64_t before = 0;
  for (uint64_t& c : tie_prefix) {
    uint64_t here = c;
    c = before;
    before += here;
  }
}

std::vector<float> sce_model_weights(const std::vector<double>& sums, size_t n_models,
                                     uint64_t n_tiles, uint64_t n_elems) {
  std::vector<double> mean(n_models, 0.0);
  double mean_sum = 0.0;
  for (size_t k = 0; k < n_models; ++k) {
    double sum = 0.0;
    for (uint64_t t = 0; t < n_tiles; ++t) sum += sums[k * n_tiles + t];
    mean[k] = n_elems ? sum / static_cast<double>(n_elems) : 0.0;
    mean_sum += mean[k];
  }
  std::vector<float> weights(n_models, 0.0f);
  for (size_t k = 0; k < n_models; ++k)
    weights[k] = static_cast<float>(std::fabs(mean_sum) < 1e-6
                                        ? 1.0 / static_cast<double>(n_models)
                                        : mean[k] / mean_sum);
  return weights;
}

namespace {

constexpr uint64_t kTile = kMethodTileElems;
constexpr uint32_t kHiBins = kSceHiBins;
constexpr uint32_t kLoBins = kSceLoBins;

struct Scratch {
  std::vector<float> base, tv;   // tv: n_models tiles
  std::vector<uint32_t> var_bits, hist;
  std::vector<uint8_t> out;
};

class SceRunner {
 public:
  SceRunner(const Plan& plan, const std::vector<SceJob>& jobs, const EngineOptions& options)
      : plan_(plan), jobs_(jobs), options_(options), kernels_(select_kernels(options.kernel)),
        method_kernels_(select_method_kernels(options.kernel)),
        threads_(resolve_threads(options.threads)) {}

  static void validate(const Plan& plan, const SceJob& job) {
    validate_input(plan, job.name, job.base, job.n_elems, true);
    for (const JobInput& m : job.models) validate_input(plan, job.name, m, job.n_elems, true);
    LADLE_CHECK(!job.models.empty(), ErrorKind::kValue, "tensor '%s': sce needs a model",
                job.name.c_str());
    LADLE_CHECK(job.select_topk == job.select_topk, ErrorKind::kValue,
                "tensor '%s': NaN select_topk", job.name.c_str());
    validate_output(plan, job.name, job.sink, job.out_offset, job.out_dtype, job.n_elems, true);
  }

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t per_elem = 1, total = 0;
    size_t max_models = 1;
    for (const SceJob& job : jobs_) {
      std::vector<JobInput> inputs{job.base};
      inputs.insert(inputs.end(), job.models.begin(), job.models.end());
      uint64_t bytes = item_n_bytes(job.out_dtype), read = 0;
      for (const JobInput& in : inputs) {
        bytes += 2 * item_n_bytes(in.dtype);
        read += job.n_elems * item_n_bytes(in.dtype);
      }
      per_elem = std::max(per_elem, bytes);
      max_models = std::max(max_models, job.models.size());
      total += read * (sce_selects(job) ? 5 : 2);
      inputs_.push_back(std::move(inputs));
    }
    // Scratch per worker (tiles, private histograms) and the per-tile state of one
    // tensor are reserved; the chunks get the rest of the budget.
    uint64_t scratch = kTile * 4 * (max_models + 3) + kLoBins * 4;
    uint64_t state = 0;
    for (const SceJob& job : jobs_)
      state = std::max(state, (job.n_elems / kTile + 1) * 8 * (max_models + 1) + keep_bytes(job));
    uint64_t reserved = threads_ * scratch + state;
    uint64_t left = options_.memory_budget > reserved ? options_.memory_budget - reserved : 0;
    chunk_elems_ = options_.chunk_elems != 0
                       ? options_.chunk_elems
                       : budget_chunk_elems(left, per_elem, threads_, kTile, kTile, kCpuMaxChunkElems);
    chunk_elems_ = (chunk_elems_ + kTile - 1) / kTile * kTile;
    pool_ = std::make_unique<ChunkPool>(plan_, threads_, 1, progress, total);
    scratch_.resize(threads_);
    for (Scratch& s : scratch_) {
      s.base.resize(kTile);
      s.tv.resize(kTile * max_models);
      s.var_bits.resize(kTile);
    }
    uint64_t n_chunks = 0;
    for (size_t j = 0; j < jobs_.size(); ++j) n_chunks += run_job(j);
    pool_->finish();
    RunStats stats = pool_->stats(chunk_elems_, threads_, kernels_.name, t0);
    for (const SceJob& job : jobs_) stats.bytes_written += job.n_elems * item_n_bytes(job.out_dtype);
    stats.n_chunks = n_chunks;
    return stats;
  }

 private:
  uint64_t run_job(size_t j) {
    const SceJob& job = jobs_[j];
    std::vector<WorkItem> items;
    for (uint64_t f = 0; f < job.n_elems; f += chunk_elems_)
      items.push_back({static_cast<uint32_t>(j), f, std::min(chunk_elems_, job.n_elems - f)});
    auto run_pass = [&](void (SceRunner::*pass)(const WorkItem&, Scratch*)) {
      pool_->run(items, [this](const WorkItem& item) -> const std::vector<JobInput>& {
        return inputs_[item.job];
      }, [this, pass](const WorkItem& item, int t) { (this->*pass)(item, &scratch_[t]); });
    };
    uint64_t read = 0;
    for (const JobInput& in : inputs_[j]) read += job.n_elems * item_n_bytes(in.dtype);
    uint64_t n_tiles = job.n_elems / kTile + 1;
    top_ = SceSelection(job);
    if (sce_selects(job)) select(job, run_pass, read, n_tiles);
    else pool_->skip(3 * read);
    replay_ = !top_.all && keep_bytes(job) > 0;
    keep_bits_.assign(replay_ ? keep_bytes(job) / 8 : 0, 0);
    // Pass 4: sum of squares of every model's selected delta, per tile.
    sq_.assign(job.models.size() * n_tiles, 0.0);
    run_pass(&SceRunner::squares);
    weights_ = sce_model_weights(sq_, job.models.size(), n_tiles, job.n_elems);
    // Pass 5: the per-element program.
    run_pass(&SceRunner::apply);
    return items.size();
  }

  template <typename RunPass>
  void select(const SceJob& job, const RunPass& run_pass, uint64_t read, uint64_t n_tiles) {
    // Pass 1: where rank k of the variances (descending) lies among the high bits.
    hist_.assign(kHiBins, 0);
    nonzero_ = 0;
    run_pass(&SceRunner::histogram_hi);
    if (!top_.pick_hi_bin(hist_, nonzero_, job.select_topk)) {
      pool_->skip(2 * read);
      return;
    }
    // Pass 2: the exact threshold inside that bin.
    hist_.assign(kLoBins, 0);
    run_pass(&SceRunner::histogram_lo);
    top_.pick_threshold(hist_, n_tiles);
    // Pass 3: per tile, the elements equal to the threshold (only when some are cut).
    if (top_.need_ties) {
      run_pass(&SceRunner::count_ties);
      top_.finish_ties();
    } else {
      pool_->skip(read);
    }
  }

  // Pass 4's keep decisions, one bit per element, when they fit a quarter of the
  // budget (0: pass 5 ranks every variance again).
  uint64_t keep_bytes(const SceJob& job) const {
    uint64_t n_bytes = (job.n_elems + 63) / 64 * 8;
    return n_bytes <= options_.memory_budget / 4 ? n_bytes : 0;
  }

  const uint8_t* input_ptr(const JobInput& in, uint64_t elem) const {
    return plan_.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
  }

  // Loads one tile: the base, every model's delta, and (when `variance`) the variance
  // bits of the deltas (fp64 two-pass over the models, rounded to fp32 once).
  void load_tile(const SceJob& job, uint64_t elem, size_t n, Scratch* s, bool variance) const {
    size_t m = job.models.size();
    if (options_.check_finite) {  // before the guarded loads: its own reads are guarded
      check_finite_input(plan_, job.name, job.base, elem, n);
      for (size_t k = 0; k < m; ++k) check_finite_input(plan_, job.name, job.models[k], elem, n);
    }
    guard_reads(plan_, job.name, [&] {
      kernels_.accumulate(job.base.dtype, input_ptr(job.base, elem), 1.0f, s->base.data(), n, true);
      for (size_t k = 0; k < m; ++k) {
        method_kernels_.delta(job.models[k].dtype, input_ptr(job.models[k], elem), s->base.data(),
                              s->tv.data() + k * kTile, n);
      }
    });
    if (variance) method_kernels_.sce_variance(s->tv.data(), kTile, m, n, s->var_bits.data());
  }

  // The deltas of the tile at `elem` that are not kept become +0: by pass 4's
  // recorded keep bits when `replay` (pass 5), else by ranking each variance (pass 4
  // records the bits when there is room for them; each tile's words are one thread's).
  void mask_tile(const SceJob& job, uint64_t elem, size_t n, Scratch* s, bool replay) {
    if (top_.all) return;
    uint64_t tile_bits[kTile / 64] = {};
    uint64_t* bits = keep_bits_.empty() ? tile_bits : keep_bits_.data() + elem / 64;
    if (!replay) {
      RankWindowBound b;
      b.all = top_.all;
      b.none = top_.none;
      b.threshold = top_.threshold;
      b.ties_keep = top_.ties_keep;
      b.ties_seen = top_.need_ties ? top_.tie_prefix[elem / kTile] : 0;
      method_kernels_.rank_keep(s->var_bits.data(), n, &b, bits);
    }
    for (size_t k = 0; k < job.models.size(); ++k)
      method_kernels_.sparsify_kept(s->tv.data() + k * kTile, n, bits, 1.0f, false);
  }

  template <typename Fn>
  void for_each_tile(const WorkItem& item, Scratch* s, const Fn& fn, bool variance = true) const {
    const SceJob& job = jobs_[item.job];
    for (uint64_t g = 0; g < item.n_elems; g += kTile) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kTile, item.n_elems - g));
      load_tile(job, item.first_elem + g, n, s, variance);
      fn(job, item.first_elem + g, n);
    }
  }

  void histogram_hi(const WorkItem& item, Scratch* s) {
    s->hist.assign(kHiBins, 0);
    uint64_t nonzero = 0;
    for_each_tile(item, s, [&](const SceJob&, uint64_t, size_t n) {
      for (size_t i = 0; i < n; ++i) {
        ++s->hist[s->var_bits[i] >> 16];
        nonzero += s->var_bits[i] != 0;
      }
    });
    std::lock_guard<std::mutex> guard(mu_);
    for (uint32_t b = 0; b < kHiBins; ++b) hist_[b] += s->hist[b];
    nonzero_ += nonzero;
  }

  void histogram_lo(const WorkItem& item, Scratch* s) {
    s->hist.assign(kLoBins, 0);
    for_each_tile(item, s, [&](const SceJob&, uint64_t, size_t n) {
      for (size_t i = 0; i < n; ++i)
        if ((s->var_bits[i] >> 16) == top_.hi_bin) ++s->hist[s->var_bits[i] & 0xFFFFu];
    });
    std::lock_guard<std::mutex> guard(mu_);
    for (uint32_t b = 0; b < kLoBins; ++b) hist_[b] += s->hist[b];
  }

  void count_ties(const WorkItem& item, Scratch* s) {
    for_each_tile(item, s, [&](const SceJob&, uint64_t elem, size_t n) {
      uint64_t count = 0;
      for (size_t i = 0; i < n; ++i) count += s->var_bits[i] == top_.threshold;
      top_.tie_prefix[elem / kTile] = count;  // each tile is written by one thread
    });
  }

  void squares(const WorkItem& item, Scratch* s) {
    uint64_t n_tiles = jobs_[item.job].n_elems / kTile + 1;
    for_each_tile(item, s, [&](const SceJob& job, uint64_t elem, size_t n) {
      mask_tile(job, elem, n, s, false);
      // Up to four models' chains side by side: each is a run of dependent fp64 adds
      // in index order, so alone it waits on every add.
      constexpr size_t kChains = 4;
      for (size_t first = 0; first < job.models.size(); first += kChains) {
        size_t count = std::min(kChains, job.models.size() - first);
        double sum[kChains] = {0.0, 0.0, 0.0, 0.0};
        const float* tv = s->tv.data() + first * kTile;
        for (size_t i = 0; i < n; ++i)
          for (size_t c = 0; c < count; ++c) {
            double x = static_cast<double>(tv[c * kTile + i]);
            sum[c] += x * x;
          }
        for (size_t c = 0; c < count; ++c)  // each tile is written by one thread
          sq_[(first + c) * n_tiles + elem / kTile] = sum[c];
      }
    }, !top_.all);
  }

  void apply(const WorkItem& item, Scratch* s) {
    const SceJob& job = jobs_[item.job];
    const Sink& sink = plan_.sinks[job.sink];
    uint64_t out_size = item_n_bytes(job.out_dtype);
    SinkSpan span(sink, job.out_offset + item.first_elem * out_size, item.n_elems * out_size,
                  &s->out);
    uint8_t* out = span.out_span();
    size_t m = job.models.size();
    for_each_tile(item, s, [&](const SceJob&, uint64_t elem, size_t n) {
      mask_tile(job, elem, n, s, replay_);
      float* mixed = s->base.data();  // in place: base[i] is read before it is written
      method_kernels_.sce_mix(s->tv.data(), kTile, m, weights_.data(), s->base.data(), mixed, n);
      uint8_t* dst = out + (elem - item.first_elem) * out_size;
      kernels_.store(job.out_dtype, mixed, 1.0f, dst, n);
      if (options_.check_finite)
        check_finite_output(sink, job.name, job.out_dtype, dst, n, elem);
    }, !top_.all && !replay_);
    span.commit();
  }

  const Plan& plan_;
  const std::vector<SceJob>& jobs_;
  const EngineOptions& options_;
  const KernelSet& kernels_;
  const MethodKernels& method_kernels_;
  int threads_;
  std::unique_ptr<ChunkPool> pool_;
  uint64_t chunk_elems_ = 0;
  std::vector<std::vector<JobInput>> inputs_;
  std::vector<Scratch> scratch_;
  // State of the tensor being run.
  std::mutex mu_;
  std::vector<uint64_t> hist_;
  uint64_t nonzero_ = 0;
  SceSelection top_;
  std::vector<double> sq_;  // [model * n_tiles + tile]
  bool replay_ = false;              // pass 5 replays keep_bits_
  std::vector<uint64_t> keep_bits_;  // pass 4's keep decisions, bit i: element i
  std::vector<float> weights_;
};

}  // namespace

void validate_sce_job(const Plan& plan, const SceJob& job) { SceRunner::validate(plan, job); }

RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs,
                      const EngineOptions& options, const ProgressFn& progress) {
  for (const SceJob& job : jobs) SceRunner::validate(plan, job);
  SceRunner runner(plan, jobs, options);
  return runner.run(progress);
}

}  // namespace ladle
