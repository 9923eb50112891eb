// CPU implementation of methods.h: a small chunk pool, rank selection by
// histograms of fp32 bit patterns (two 16-bit radix passes, then a tie count per
// tile), the per-element task-vector program and the tiled fp64 Gram reduction.
#include "methods.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "chunk_runner.h"
#include "common.h"
#include "kernels.h"
#include "safetensors.h"

namespace ladle {
namespace {

constexpr uint64_t kTile = kMethodTileElems;
constexpr uint64_t kGroupElems = kGramTiles * kTile;
// Models whose L1 sums one l1_sums call interleaves (two arrays each).
constexpr size_t kL1Models = kDareNormModels;
// Most inputs (deltas) one gram_inputs call takes; more run the staged Gram kernel.
constexpr size_t kGramFusedInputs = 4;
constexpr uint32_t kHiBins = kHiHistBins;  // (|x| bits) >> 16; the sign bit is cleared
constexpr uint32_t kLoBins = 1u << 16;  // (|x| bits) & 0xFFFF inside the chosen high bin
// The memory budget covers every byte in flight: per-tensor statistics held at once
// (histograms, tie counts, partial sums) get up to a quarter of it, pass 2's recorded
// candidates another quarter, and the chunks (input pages, staging) the rest.
constexpr uint64_t kBatchStateBytes = 64ull << 20;
constexpr uint64_t kCandidateBytes = 32ull << 20;

uint64_t state_limit(const EngineOptions& options) {
  return std::min(kBatchStateBytes, options.memory_budget / 4);
}
uint64_t candidate_limit(const EngineOptions& options) {
  return std::min(kCandidateBytes, options.memory_budget / 4);
}
// Tiles per tensor whose |delta| guess the rank windows (spread evenly over it), and
// of a larger tensor every kSampleStride-th element of each: the tiles' spread is
// what makes the guess good (neighbours in a row are alike), and a quarter of the
// values costs a quarter of the ordering.
constexpr uint64_t kSampleTiles = 256;
constexpr uint64_t kSampleStride = 4;
// A thread unmaps the pages its sampled tiles mapped once per this many tiles (one
// system call and TLB shootdown per input for the span they cover, not per tile).
constexpr uint32_t kSampleReleaseTiles = 32;
constexpr uint64_t kMinChunkElems = 16 * 1024;
constexpr uint64_t kMaxChunkElems = kCpuMaxChunkElems;

using Item = WorkItem;

// Chunk length: a whole number of tiles, derived from the budget like the engine's.
uint64_t method_chunk_elems(uint64_t per_elem_bytes, const EngineOptions& options, int threads,
                            uint64_t reserved) {
  uint64_t chunk = options.chunk_elems;
  if (chunk == 0) {
    chunk = budget_chunk_elems(options.memory_budget - reserved, per_elem_bytes,
                               static_cast<uint64_t>(threads), 4096, kMinChunkElems,
                               kMaxChunkElems);
  }
  return (chunk + kTile - 1) / kTile * kTile;
}

// ---------------------------------------------------------------------------
// Rank selection. "rank < r" for an element means: fewer than r elements come
// before it in the order (|delta| descending, then index ascending). With T the
// |delta| bit pattern at rank r, it holds when bits > T, or bits == T and fewer
// than ties_keep = r - #(bits > T) elements equal to T precede it.

struct Selection {
  uint64_t rank = 0;
  bool none = true;   // rank == 0: no element is below it
  bool all = false;   // rank >= n: every element is
  uint32_t hi_bin = 0;
  uint64_t above_hi = 0;  // elements in higher bins than hi_bin
  uint32_t threshold = 0;
  uint64_t ties_keep = 0;
  uint64_t n_equal = 0;
  bool need_ties = false;  // some, not all, elements equal to T are below the rank
  std::vector<uint64_t> hist_lo;
  std::vector<uint64_t> tie_prefix;  // per tile: elements equal to T in earlier tiles
  // Pass 2 keeps the low 16 bits of the elements in hi_bin (in index order, per chunk)
  // when they fit kCandidateBytes, so the tie counts need no third read.
  uint64_t in_bin = 0;
  bool recorded = false;
  std::vector<std::vector<uint16_t>> chunk_lo;
  std::vector<uint32_t> tile_in_bin;  // per tile: candidates recorded (either pass)
  // The window pass, tried before the histograms: a sample of tiles guesses the bit
  // range [w_lo, w_hi] holding the threshold; one read then counts the elements above
  // it (per chunk) and records those inside it (their abs bits, in index order). When
  // the rank falls inside, the threshold and tie counts come from the record and the
  // histogram passes are skipped (`resolved`); else they run as before.
  bool windowed = false;
  bool resolved = false;
  uint32_t w_lo = 0, w_hi = 0;
  uint64_t expected = 0;  // candidates the sample predicts inside the window
  std::vector<uint64_t> chunk_above;
  std::vector<std::vector<uint32_t>> chunk_bits;

  void init(uint64_t r, uint64_t n) {
    rank = r;
    none = r == 0;
    all = r >= n;
  }
  bool active() const { return !none && !all; }
};

// The kernels' view of "rank < r" for the elements of one tile, in index order.
RankWindowBound bound_at(const Selection& s, uint64_t tile) {
  RankWindowBound b;
  b.all = s.all;
  b.none = s.none;
  b.threshold = s.threshold;
  b.ties_keep = s.ties_keep;
  b.ties_seen = s.need_ties ? s.tie_prefix[tile] : 0;
  return b;
}

struct ModelState {
  std::vector<uint64_t> hist_hi;
  Selection lo, hi;  // kept: !(rank < lo.rank) && (rank < hi.rank)
  std::vector<double> l1_before, l1_after;  // Rescale::kL1: per-tile partial sums
  // DARE with Rescale::kL1: the keep decisions the norm pass drew, one bit per element,
  // so the apply pass reuses them instead of drawing the stream again (empty: redraw).
  std::vector<uint64_t> keep;
  bool scaled = false;
  float scale = 1.0f;
  std::vector<uint32_t> sample;  // abs bits of |delta| in the sampled tiles (windows)
  bool selects() const { return lo.active() || hi.active(); }
  // Some selection still needs the histogram passes (its window missed).
  bool needs_histograms() const {
    return (lo.active() && !lo.resolved) || (hi.active() && !hi.resolved);
  }
};

struct JobState {
  std::mutex mu;
  std::vector<ModelState> models;
  bool selects = false;
  std::atomic<uint64_t> window_recorded{0};  // candidates recorded by the window pass
  uint64_t window_max = 0;                   // more than this: every window misses
  std::atomic<bool> window_overflow{false};
  bool window_scanned = false;  // a window round has read (and counted) the job
};

// A selection whose sampled window the window passes will try: its predicted
// candidates (with margin) and the bytes recording them takes.
struct WindowPick {
  size_t job;
  Selection* sel;
  uint64_t expected;
  uint64_t bytes;
};

// Per-thread scratch.
struct TaskScratch {
  std::vector<float> base, x, wd;  // wd: n_models tiles of weighted deltas
  std::vector<float> kept;          // the norm pass: x sparsified (kL1Models groups)
  std::vector<uint32_t> hist;      // pass 1: n_models * kHiHistCopies * kHiBins; pass 2: 2 * n_models * kLoBins
  std::vector<uint16_t> found;     // pass 2: one tile's candidates
  std::vector<uint32_t> in_window; // window pass: one tile's candidates per window (+ kWindowSlack)
  std::vector<TileModel> tile_models;  // the apply pass's models of one tile
  std::vector<uint8_t> out;
  // The sample pass: the element span of this thread's sampled tiles of `job` whose
  // pages are still mapped (released every kSampleReleaseTiles tiles).
  struct {
    uint32_t job = UINT32_MAX;
    uint64_t first = 0, end = 0;
    uint32_t tiles = 0;
  } sampled;
};

// The k-th largest value and how many values are above it and equal to it.
struct Ranked {
  uint32_t value;
  uint64_t higher;
  uint64_t equal;
};

// The k-th largest (0-based), for each k in `ks`, of the values `each` visits
// (each(visit) calls visit(v) for every v), all in [lo, hi]: a histogram of 2^16 bins
// over (v - lo) >> shift finds each value's bin, then only those bins' values are
// ordered. Two reads and a small copy instead of ordering the whole set.
template <class Each>
std::vector<Ranked> kth_largest(const Each& each, const std::vector<uint64_t>& ks, uint32_t lo,
                                uint32_t hi) {
  int shift = 0;
  while (((hi - lo) >> shift) >= (1u << 16)) ++shift;
  // One histogram per thread, reused: fresh pages are slow to touch on some machines.
  thread_local std::vector<uint64_t> hist;
  hist.assign(((hi - lo) >> shift) + 1, 0);
  each([&](uint32_t v) { ++hist[(v - lo) >> shift]; });
  // Per k: its bin and the values above that bin.
  std::vector<size_t> bin_of(ks.size());
  std::vector<uint64_t> above_of(ks.size());
  for (size_t q = 0; q < ks.size(); ++q) {
    uint64_t above = 0;
    size_t bin = hist.size();
    while (bin-- > 0) {
      if (above + hist[bin] > ks[q]) break;
      above += hist[bin];
    }
    LADLE_CHECK(bin < hist.size(), ErrorKind::kValue, "internal: rank beyond the values");
    bin_of[q] = bin;
    above_of[q] = above;
  }
  std::vector<size_t> bins = bin_of;
  std::sort(bins.begin(), bins.end());
  bins.erase(std::unique(bins.begin(), bins.end()), bins.end());
  std::vector<std::vector<uint32_t>> in_bin(bins.size());
  for (size_t b = 0; b < bins.size(); ++b) in_bin[b].reserve(hist[bins[b]]);
  each([&](uint32_t v) {
    size_t bin = (v - lo) >> shift;
    for (size_t b = 0; b < bins.size(); ++b)
      if (bins[b] == bin) in_bin[b].push_back(v);
  });
  std::vector<Ranked> out(ks.size());
  for (size_t q = 0; q < ks.size(); ++q) {
    std::vector<uint32_t>& values =
        in_bin[std::lower_bound(bins.begin(), bins.end(), bin_of[q]) - bins.begin()];
    auto nth = values.begin() + static_cast<int64_t>(ks[q] - above_of[q]);
    std::nth_element(values.begin(), nth, values.end(), std::greater<uint32_t>());
    Ranked r{*nth, above_of[q], 0};
    for (uint32_t v : values) {  // the bin's values above and equal to it
      r.higher += v > r.value;
      r.equal += v == r.value;
    }
    out[q] = r;
  }
  return out;
}

class TaskRunner {
 public:
  TaskRunner(const Plan& plan, const std::vector<TaskJob>& jobs, const EngineOptions& options)
      : plan_(plan), jobs_(jobs), options_(options), kernels_(select_kernels(options.kernel)),
        method_kernels_(select_method_kernels(options.kernel)),
        threads_(resolve_threads(options.threads)) {}

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t per_elem = 1, total = 0;
    size_t max_models = 1;
    inputs_.resize(jobs_.size());
    for (size_t j = 0; j < jobs_.size(); ++j) {
      const TaskJob& job = jobs_[j];
      inputs_[j].push_back(job.base);
      for (const TaskModel& m : job.models) inputs_[j].push_back(m.input);
      uint64_t bytes = item_n_bytes(job.out_dtype), read = 0;
      for (const JobInput& in : inputs_[j]) {
        bytes += 2 * item_n_bytes(in.dtype);
        read += job.n_elems * item_n_bytes(in.dtype);
      }
      per_elem = std::max(per_elem, bytes);
      max_models = std::max(max_models, job.models.size());
      bool selects = job.sparsify == Sparsify::kMagnitude || job.sparsify == Sparsify::kOutliers;
      bool norms = job.rescale == Rescale::kL1 && job.sparsify != Sparsify::kNone;
      total += read * ((selects ? 2 : 1) + (norms ? 1 : 0));
    }
    chunk_elems_ = method_chunk_elems(per_elem, options_, threads_,
                                      state_limit(options_) + candidate_limit(options_));
    pool_ = std::make_unique<ChunkPool>(plan_, threads_, 1, progress, total);
    scratch_.resize(threads_);
    for (TaskScratch& s : scratch_) {
      s.base.resize(kGroupElems);
      s.x.resize(kL1Models * kGroupElems);
      s.kept.resize(kL1Models * kGroupElems);
      s.wd.resize(kTile * max_models);
      s.found.resize(kTile);
      s.in_window.resize(kMaxWindows * (kTile + kWindowSlack));
      s.tile_models.resize(max_models);
    }
    // Batches of consecutive jobs whose selection state fits state_limit().
    size_t begin = 0;
    while (begin < jobs_.size()) {
      size_t end = begin;
      uint64_t state_bytes = 0;
      while (end < jobs_.size()) {
        uint64_t bytes = selection_bytes(jobs_[end]);
        if (end > begin && state_bytes + bytes > state_limit(options_)) break;
        state_bytes += bytes;
        ++end;
      }
      run_batch(begin, end);
      begin = end;
    }
    pool_->finish();
    RunStats stats = pool_->stats(chunk_elems_, threads_, method_kernels_.name, t0);
    for (const TaskJob& job : jobs_) {
      stats.bytes_written += job.n_elems * item_n_bytes(job.out_dtype);
      for (uint64_t f = 0; f < job.n_elems; f += chunk_elems_) ++stats.n_chunks;
    }
    stats.rng_draws = rng_draws_.load();
    stats.ranks_sampled = ranks_sampled_;
    stats.ranks_histogrammed = ranks_histogrammed_;
    return stats;
  }

 private:
  static bool norms(const TaskJob& job) {
    return job.rescale == Rescale::kL1 && job.sparsify != Sparsify::kNone;
  }

  // DARE's keep bits of every model of `job`, when the norm pass records them: only
  // while they fit the statistics' share of the budget (else the apply pass redraws).
  uint64_t keep_bytes(const TaskJob& job) const {
    if (job.sparsify != Sparsify::kRandom || !norms(job)) return 0;
    uint64_t bytes = job.models.size() * (job.n_elems / 64 + 1) * sizeof(uint64_t);
    return bytes <= state_limit(options_) ? bytes : 0;
  }

  uint64_t selection_bytes(const TaskJob& job) const {
    if (!selects_by_rank(job)) return keep_bytes(job);
    uint64_t sample = sample_shape(job).second * (kTile / sample_stride(job)) * sizeof(uint32_t);
    return job.models.size() * (kHiBins + 2ull * kLoBins) * sizeof(uint64_t) +
           job.models.size() * sample +
           job.models.size() * 2 * (job.n_elems / kTile + 1) * sizeof(uint64_t);
  }

  // One read of the inputs: `pass` on every item.
  // `counted`: its bytes count as progress (else the pass is not in the total).
  void run_pass(const std::vector<Item>& items, void (TaskRunner::*pass)(const Item&, TaskScratch*),
                bool counted = true) {
    ChunkPool::BytesOf progress_of;
    if (!counted) progress_of = [](const Item&) -> uint64_t { return 0; };
    run_pass(items, pass, progress_of);
  }
  // `progress_of`: the bytes an item counts as progress (empty: what it reads).
  void run_pass(const std::vector<Item>& items, void (TaskRunner::*pass)(const Item&, TaskScratch*),
                const ChunkPool::BytesOf& progress_of) {
    pool_->run(
        items, [this](const Item& item) -> const std::vector<JobInput>& { return inputs_[item.job]; },
        [this, pass](const Item& item, int t) { (this->*pass)(item, &scratch_[t]); }, progress_of);
  }

  uint64_t job_read_bytes(size_t j) const {
    uint64_t n = 0;
    for (const JobInput& in : inputs_[j]) n += jobs_[j].n_elems * item_n_bytes(in.dtype);
    return n;
  }

  std::vector<Item> items_of(size_t begin, size_t end, const std::function<bool(size_t)>& want) {
    std::vector<Item> items;
    for (size_t j = begin; j < end; ++j) {
      if (!want(j)) continue;
      const TaskJob& job = jobs_[j];
      for (uint64_t f = 0; f < job.n_elems; f += chunk_elems_)
        items.push_back({static_cast<uint32_t>(j), f, std::min(chunk_elems_, job.n_elems - f)});
    }
    return items;
  }

  // Every read of a mapped input goes through here or check_finite_input, under
  // guard_reads: a file truncated during the run is an IO error, not a crash.
  void load(const TaskJob& job, const JobInput& in, uint64_t elem, size_t n, float* dst) const {
    guard_reads(plan_, job.name,
                [&] { kernels_.accumulate(in.dtype, input_ptr(plan_, in, elem), 1.0f, dst, n, true); });
  }

  void run_batch(size_t begin, size_t end) {
    states_.clear();
    states_.reserve(end - begin);
    for (size_t j = begin; j < end; ++j) {
      states_.push_back(std::make_unique<JobState>());
      JobState& st = *states_.back();
      const TaskJob& job = jobs_[j];
      st.models.resize(job.models.size());
      for (size_t k = 0; k < job.models.size(); ++k) {
        ModelState& ms = st.models[k];
        if (selects_by_rank(job)) {
          ms.lo.init(job.models[k].rank_lo, job.n_elems);
          ms.hi.init(job.models[k].rank_hi, job.n_elems);
        } else {
          ms.lo.init(0, job.n_elems);
          ms.hi.init(job.n_elems, job.n_elems);
        }
        st.selects = st.selects || ms.selects();
      }
    }
    batch_begin_ = begin;
    auto selecting = [&](size_t j) { return states_[j - begin]->selects; };
    // Statistics in one read when the sampled windows hold the thresholds.
    scan_windows(begin, end, choose_windows(begin, end));
    for (size_t j = begin; j < end; ++j)
      if (selecting(j) && !states_[j - begin]->window_scanned) pool_->skip(job_read_bytes(j));
    // The histogram passes, for the selections whose window missed (not counted as
    // progress: the window pass already was).
    auto histogramming = [&](size_t j) {
      for (const ModelState& ms : states_[j - begin]->models)
        if (ms.needs_histograms()) return true;
      return false;
    };
    bool any_histograms = false;
    for (size_t j = begin; j < end; ++j) {
      any_histograms = any_histograms || histogramming(j);
      for (const ModelState& ms : states_[j - begin]->models) {
        for (const Selection* sel : {&ms.lo, &ms.hi}) {
          if (!sel->active()) continue;
          ++(sel->resolved ? ranks_sampled_ : ranks_histogrammed_);
        }
      }
    }
    if (any_histograms) histogram_passes(begin, end, histogramming);
    for (size_t j = begin; j < end; ++j) {
      for (ModelState& ms : states_[j - begin]->models) {
        for (Selection* s : {&ms.lo, &ms.hi}) {
          uint64_t before = 0;
          for (uint64_t& c : s->tie_prefix) {
            uint64_t here = c;
            c = before;
            before += here;
          }
        }
      }
    }
    // Pass 4 (Rescale::kL1): L1 norms of every delta before and after sparsification.
    auto norming = [&](size_t j) { return norms(jobs_[j]); };
    bool any_norms = false;
    for (size_t j = begin; j < end; ++j) {
      if (!norming(j)) continue;
      any_norms = true;
      for (ModelState& ms : states_[j - begin]->models) {
        ms.l1_before.assign(jobs_[j].n_elems / kTile + 1, 0.0);
        ms.l1_after.assign(jobs_[j].n_elems / kTile + 1, 0.0);
        if (keep_bytes(jobs_[j]) > 0) ms.keep.assign(jobs_[j].n_elems / 64 + 1, 0);
      }
    }
    if (any_norms) {
      run_pass(items_of(begin, end, norming), &TaskRunner::l1_norms);
      for (size_t j = begin; j < end; ++j) {
        if (!norming(j)) continue;
        for (ModelState& ms : states_[j - begin]->models) {
          double before = 0.0, after = 0.0;
          for (double v : ms.l1_before) before += v;
          for (double v : ms.l1_after) after += v;
          ms.scaled = !(before < 1e-7 || after < 1e-7);
          ms.scale = static_cast<float>(before / after);
          std::vector<double>().swap(ms.l1_before);
          std::vector<double>().swap(ms.l1_after);
        }
      }
    }
    // Pass 5: the per-element program.
    run_pass(items_of(begin, end, [](size_t) { return true; }), &TaskRunner::apply);
  }

  // Radix selection for the selections without a resolved window: pass 1 histograms
  // the high 16 bits of |delta|, pass 2 the low 16 bits inside the chosen high bin
  // (recording them when they fit, so the tie counts need no third read), pass 3
  // counts the elements equal to the threshold per tile when some of them are kept.
  void histogram_passes(size_t begin, size_t end, const std::function<bool(size_t)>& want) {
    for (size_t j = begin; j < end; ++j)
      for (ModelState& ms : states_[j - begin]->models)
        if (ms.needs_histograms()) ms.hist_hi.assign(kHiBins, 0);
    run_pass(items_of(begin, end, want), &TaskRunner::histogram_hi, false);
    for (size_t j = begin; j < end; ++j) {
      for (ModelState& ms : states_[j - begin]->models) {
        pick_hi_bin(ms, &ms.lo);
        pick_hi_bin(ms, &ms.hi);
        std::vector<uint64_t>().swap(ms.hist_hi);
      }
    }
    uint64_t candidate_bytes = 0;
    uint64_t candidates_max = candidate_limit(options_);
    for (size_t j = begin; j < end; ++j) {
      uint64_t n_tiles = jobs_[j].n_elems / kTile + 1;
      uint64_t n_chunks = (jobs_[j].n_elems + chunk_elems_ - 1) / chunk_elems_;
      for (ModelState& ms : states_[j - begin]->models) {
        for (Selection* sel : {&ms.lo, &ms.hi}) {
          if (!sel->active() || sel->resolved) continue;
          uint64_t bytes = sel->in_bin * sizeof(uint16_t) + n_tiles * sizeof(uint32_t);
          if (candidate_bytes + bytes > candidates_max) continue;
          candidate_bytes += bytes;
          sel->recorded = true;
          sel->chunk_lo.resize(n_chunks);
          sel->tile_in_bin.assign(n_tiles, 0);
        }
      }
    }
    run_pass(items_of(begin, end, want), &TaskRunner::histogram_lo, false);
    bool any_ties = false;
    for (size_t j = begin; j < end; ++j) {
      for (ModelState& ms : states_[j - begin]->models) {
        for (Selection* s : {&ms.lo, &ms.hi}) {
          if (s->resolved) continue;
          pick_threshold(s);
          if (s->need_ties) s->tie_prefix.assign(jobs_[j].n_elems / kTile + 1, 0);
          if (s->need_ties && s->recorded)
            count_recorded_ties(jobs_[j], s->chunk_lo, static_cast<uint16_t>(s->threshold & 0xFFFFu), s);
          any_ties = any_ties || (s->need_ties && !s->recorded);
          std::vector<std::vector<uint16_t>>().swap(s->chunk_lo);
          std::vector<uint32_t>().swap(s->tile_in_bin);
        }
      }
    }
    auto tying = [&](size_t j) {
      for (ModelState& ms : states_[j - begin]->models)
        for (const Selection* s : {&ms.lo, &ms.hi})
          if (s->need_ties && !s->recorded && !s->resolved) return true;
      return false;
    };
    if (any_ties) run_pass(items_of(begin, end, tying), &TaskRunner::count_ties, false);
  }

  // Walks bins from the top down to the one holding rank r.
  static void pick_hi_bin(const ModelState& ms, Selection* s) {
    if (!s->active() || s->resolved) return;
    uint64_t cum = 0;
    for (uint32_t b = kHiBins; b-- > 0;) {
      if (cum + ms.hist_hi[b] > s->rank) {
        s->hi_bin = b;
        s->above_hi = cum;
        s->in_bin = ms.hist_hi[b];
        s->hist_lo.assign(kLoBins, 0);
        return;
      }
      cum += ms.hist_hi[b];
    }
    raise(ErrorKind::kValue, "internal: rank beyond histogram");
  }

  // Per tile, the recorded candidates equal to `want` (tie_prefix, not yet summed):
  // `chunks` holds them per chunk in index order, tile_in_bin how many per tile.
  template <class Bits>
  void count_recorded_ties(const TaskJob& job, const std::vector<std::vector<Bits>>& chunks,
                           Bits want, Selection* s) const {
    for (size_t c = 0; c < chunks.size(); ++c) {
      const Bits* bits = chunks[c].data();
      uint64_t first = c * chunk_elems_, last = std::min(job.n_elems, first + chunk_elems_);
      for (uint64_t t = first / kTile; t * kTile < last; ++t) {
        uint64_t count = 0;
        for (uint32_t i = 0; i < s->tile_in_bin[t]; ++i) count += bits[i] == want;
        s->tie_prefix[t] = count;
        bits += s->tile_in_bin[t];
      }
    }
  }

  // A job's tiles and how many of them its sample reads (all, up to kSampleTiles).
  static std::pair<uint64_t, uint64_t> sample_shape(const TaskJob& job) {
    uint64_t n_tiles = (job.n_elems + kTile - 1) / kTile;
    return {n_tiles, std::min(n_tiles, kSampleTiles)};
  }
  // Every how many elements of a sampled tile the sample keeps: all of a tensor sampled
  // whole (its thresholds come from the sample), else kSampleStride.
  static uint64_t sample_stride(const TaskJob& job) {
    const auto [n_tiles, n_sampled] = sample_shape(job);
    return n_sampled == n_tiles ? 1 : kSampleStride;
  }

  // The sample of every selecting model of jobs [begin, end): the |delta| bits of
  // kSampleTiles tiles spread over the tensor (all of a smaller one); then each
  // selection's window [w_lo, w_hi] around the sample's guess of its threshold,
  // wide enough that a miss is unlikely and narrow enough that its candidates fit
  // the budget's candidate share (a selection that does not fit skips the window).
  std::vector<WindowPick> choose_windows(size_t begin, size_t end) {
    std::vector<Item> items;
    for (size_t j = begin; j < end; ++j) {
      JobState& st = *states_[j - begin];
      if (!st.selects) continue;
      const TaskJob& job = jobs_[j];
      const auto [n_tiles, n_sampled] = sample_shape(job);
      for (ModelState& ms : st.models) {
        if (!ms.selects()) continue;
        if (!spare_samples_.empty()) {  // reuse a finished sample's memory
          ms.sample.swap(spare_samples_.back());
          spare_samples_.pop_back();
        }
        ms.sample.assign(n_sampled * (kTile / sample_stride(job)), 0);
      }
      if (n_sampled == n_tiles) {  // sampled whole: in chunks, as the other passes read
        for (uint64_t f = 0; f < job.n_elems; f += chunk_elems_)
          items.push_back({static_cast<uint32_t>(j), f, std::min(chunk_elems_, job.n_elems - f)});
        continue;
      }
      for (uint64_t i = 0; i < n_sampled; ++i) {
        uint64_t t = i * n_tiles / n_sampled;
        items.push_back({static_cast<uint32_t>(j), t * kTile, std::min(kTile, job.n_elems - t * kTile)});
      }
    }
    if (items.empty()) return {};
    run_pass(items, &TaskRunner::sample_tile, false);  // it releases the pages it maps
    for (TaskScratch& s : scratch_) release_sampled(&s);
    // Each sampled model's windows (or, sampled whole, its thresholds) on the
    // runner's threads; then, in order, which windows the candidate budget takes.
    std::vector<std::pair<size_t, ModelState*>> sampled;
    for (size_t j = begin; j < end; ++j)
      for (ModelState& ms : states_[j - begin]->models)
        if (!ms.sample.empty()) sampled.emplace_back(j, &ms);
    in_parallel(sampled.size(), [&](size_t i) {
      const TaskJob& job = jobs_[sampled[i].first];
      ModelState& ms = *sampled[i].second;
      const auto [n_tiles, n_sampled] = sample_shape(job);
      // The last tile may be short: drop its unused slots.
      uint64_t last = (n_sampled - 1) * n_tiles / n_sampled, stride = sample_stride(job);
      uint64_t last_n = std::min(kTile, job.n_elems - last * kTile);
      ms.sample.resize((n_sampled - 1) * (kTile / stride) + (last_n + stride - 1) / stride);
      for (Selection* sel : {&ms.lo, &ms.hi}) {
        if (!sel->active()) continue;
        if (n_sampled == n_tiles) settle_from_sample(ms.sample, sel);
        else pick_window(ms.sample, job.n_elems, sel, &sel->expected);
      }
    });
    for (auto& [j, ms] : sampled) {
      spare_samples_.emplace_back();
      spare_samples_.back().swap(ms->sample);
    }
    std::vector<WindowPick> picks;
    for (const auto& [j, ms] : sampled) {
      const TaskJob& job = jobs_[j];
      uint64_t n_tiles = (job.n_elems + kTile - 1) / kTile;
      uint64_t n_chunks = (job.n_elems + chunk_elems_ - 1) / chunk_elems_;
      for (Selection* sel : {&ms->lo, &ms->hi}) {
        if (!sel->active() || sel->resolved) continue;
        uint64_t expected = sel->expected + sel->expected / 4;  // give or take
        uint64_t bytes = expected * sizeof(uint32_t) + n_tiles * sizeof(uint32_t) +
                         n_chunks * (sizeof(uint64_t) + sizeof(std::vector<uint32_t>));
        // A window that alone outgrows the candidates' share is left to the histograms.
        if (bytes <= candidate_limit(options_)) picks.push_back({j, sel, expected, bytes});
      }
    }
    return picks;
  }

  // The window passes: rounds of consecutive picks whose candidates fit the budget's
  // candidate share together, each one read of the round's jobs (of their picked
  // models only), then the round's windows resolved and their candidates freed. A job
  // is counted as progress by its first round.
  void scan_windows(size_t begin, size_t end, const std::vector<WindowPick>& picks) {
    for (size_t next = 0; next < picks.size();) {
      uint64_t used = 0;
      size_t stop = next;
      for (size_t j = begin; j < end; ++j) {
        JobState& st = *states_[j - begin];
        st.window_max = 0;
        st.window_recorded.store(0);
        st.window_overflow.store(false);
      }
      for (; stop < picks.size() && used + picks[stop].bytes <= candidate_limit(options_); ++stop) {
        const WindowPick& p = picks[stop];
        used += p.bytes;
        const TaskJob& job = jobs_[p.job];
        uint64_t n_chunks = (job.n_elems + chunk_elems_ - 1) / chunk_elems_;
        states_[p.job - begin]->window_max += p.expected;
        p.sel->windowed = true;
        p.sel->chunk_above.assign(n_chunks, 0);
        p.sel->chunk_bits.resize(n_chunks);
        p.sel->tile_in_bin.assign((job.n_elems + kTile - 1) / kTile, 0);
      }
      auto windowing = [&](size_t j) {
        for (const ModelState& ms : states_[j - begin]->models)
          if (ms.lo.windowed || ms.hi.windowed) return true;
        return false;
      };
      std::vector<uint8_t> first_read(end - begin, 0);
      for (size_t j = begin; j < end; ++j) {
        JobState& st = *states_[j - begin];
        if (!windowing(j) || st.window_scanned) continue;
        first_read[j - begin] = 1;
        st.window_scanned = true;
      }
      run_pass(items_of(begin, end, windowing), &TaskRunner::window_scan,
               [&](const Item& item) -> uint64_t {
                 if (!first_read[item.job - begin]) return 0;
                 uint64_t n = 0;
                 for (const JobInput& in : inputs_[item.job]) n += item.n_elems * item_n_bytes(in.dtype);
                 return n;
               });
      in_parallel(stop - next, [&](size_t i) { resolve_window(picks[next + i].job, picks[next + i].sel); });
      next = stop;
    }
  }

  // Runs fn(i) for every i < n on the runner's threads (work between passes).
  void in_parallel(size_t n, const std::function<void(size_t)>& fn) const {
    if (n == 0) return;
    std::atomic<uint64_t> none{0};
    run_workers(n, static_cast<int>(std::min<size_t>(static_cast<size_t>(threads_), n)), nullptr,
                [&](int, size_t i) { fn(i); }, ProgressFn(), none, 0);
  }

  // The window of `s` from a model's sample (which it reorders): sample positions
  // around the rank's share of it, descending by bits. *expected: the candidates the
  // sample predicts for the whole tensor, plus a tile.
  static void pick_window(const std::vector<uint32_t>& sample, uint64_t n_elems, Selection* s,
                          uint64_t* expected) {
    double m = static_cast<double>(sample.size());
    double q = static_cast<double>(s->rank) / static_cast<double>(n_elems);
    // Six standard deviations of the sample quantile, plus 0.4% of the ranks because
    // sampled tiles are runs of neighbours (rows), not independent draws.
    double margin = 0.004 * m + 6.0 * std::sqrt(m * q * (1.0 - q)) + 4.0;
    double at = q * m;
    auto each = [&](auto&& visit) {
      for (uint32_t b : sample) visit(b);
    };
    // Sample positions past either end leave that side of the window open.
    std::vector<uint64_t> ks;
    bool upper = at - margin >= 0.0, lower = at + margin <= m - 1.0;
    if (upper) ks.push_back(static_cast<uint64_t>(std::floor(at - margin)));
    if (lower) ks.push_back(static_cast<uint64_t>(std::ceil(at + margin)));
    std::vector<Ranked> bounds = ks.empty() ? std::vector<Ranked>()
                                            : kth_largest(each, ks, 0, 0x7FFFFFFFu);
    s->w_hi = upper ? bounds.front().value : 0x7FFFFFFFu;
    s->w_lo = lower ? bounds.back().value : 0;
    // Samples inside [w_lo, w_hi]: those >= w_lo less those > w_hi.
    uint64_t at_least_lo = lower ? bounds.back().higher + bounds.back().equal : sample.size();
    uint64_t inside = at_least_lo - (upper ? bounds.front().higher : 0);
    *expected = static_cast<uint64_t>(static_cast<double>(inside) / m *
                                      static_cast<double>(n_elems)) + kTile;
  }

  // Resolves `s` from the bits of every element inside [lo, hi] (`each` visits them)
  // and `above`, the number of elements above hi (the rank is known to fall inside):
  // the threshold, how many equal it and how many of those are kept.
  template <class Each>
  static void settle(const Each& each, uint32_t lo, uint32_t hi, uint64_t above, Selection* s) {
    Ranked t = kth_largest(each, {s->rank - above}, lo, hi).front();
    s->threshold = t.value;
    s->n_equal = t.equal;
    s->ties_keep = s->rank - (above + t.higher);
    s->need_ties = s->ties_keep > 0 && s->ties_keep < s->n_equal;
    s->resolved = true;
  }

  // A tensor of at most kSampleTiles tiles is sampled whole, tile i in slot i: its
  // selections are resolved from the sample, with no window pass.
  static void settle_from_sample(const std::vector<uint32_t>& sample, Selection* s) {
    settle([&](auto&& visit) { for (uint32_t b : sample) visit(b); }, 0, 0x7FFFFFFFu, 0, s);
    if (!s->need_ties) return;
    s->tie_prefix.assign(sample.size() / kTile + 1, 0);
    for (size_t t = 0; t * kTile < sample.size(); ++t) {  // a count per tile, in a register
      uint64_t equal = 0;
      for (size_t i = t * kTile; i < std::min(sample.size(), (t + 1) * kTile); ++i)
        equal += sample[i] == s->threshold;
      s->tie_prefix[t] = equal;
    }
  }

  // After the window pass: the threshold and tie counts of windowed selection `s` of
  // job j when its rank fell inside its window (else the histogram passes find them).
  void resolve_window(size_t j, Selection* s) {
    const TaskJob& job = jobs_[j];
    bool overflow = states_[j - batch_begin_]->window_overflow.load();
    s->windowed = false;
    uint64_t above = 0, inside = 0;
    for (uint64_t c : s->chunk_above) above += c;
    for (const std::vector<uint32_t>& c : s->chunk_bits) inside += c.size();
    if (!overflow && above <= s->rank && s->rank < above + inside) {
      auto each = [&](auto&& visit) {
        for (const std::vector<uint32_t>& c : s->chunk_bits)
          for (uint32_t b : c) visit(b);
      };
      settle(each, s->w_lo, s->w_hi, above, s);
      if (s->need_ties) {
        s->tie_prefix.assign(job.n_elems / kTile + 1, 0);
        count_recorded_ties(job, s->chunk_bits, s->threshold, s);
      }
    }
    std::vector<std::vector<uint32_t>>().swap(s->chunk_bits);
    std::vector<uint64_t>().swap(s->chunk_above);
    std::vector<uint32_t>().swap(s->tile_in_bin);
  }

  static void pick_threshold(Selection* s) {
    if (!s->active()) return;
    uint64_t cum = s->above_hi;
    for (uint32_t b = kLoBins; b-- > 0;) {
      if (cum + s->hist_lo[b] > s->rank) {
        s->threshold = (s->hi_bin << 16) | b;
        s->n_equal = s->hist_lo[b];
        s->ties_keep = s->rank - cum;
        s->need_ties = s->ties_keep > 0 && s->ties_keep < s->n_equal;
        std::vector<uint64_t>().swap(s->hist_lo);
        return;
      }
      cum += s->hist_lo[b];
    }
    raise(ErrorKind::kValue, "internal: rank beyond histogram");
  }

  // Calls fn(elem, n) for every tile of `item` (n <= kTile elements from elem),
  // with the base model's tile already loaded into s->base.
  // (With group = kGroupElems: runs of up to kGramTiles tiles.)
  template <class Fn>
  void for_each_base_tile(const TaskJob& job, const Item& item, TaskScratch* s, Fn&& fn,
                          uint64_t group = kTile) const {
    for (uint64_t t = 0; t < item.n_elems; t += group) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(group, item.n_elems - t));
      uint64_t elem = item.first_elem + t;
      load(job, job.base, elem, n, s->base.data());
      fn(elem, n);
    }
  }

  // delta = x_k - base for one tile into `d` (default s->x).
  void load_delta(const TaskJob& job, size_t k, uint64_t elem, size_t n, TaskScratch* s,
                  float* d = nullptr) const {
    const JobInput& in = job.models[k].input;
    if (d == nullptr) d = s->x.data();
    guard_reads(plan_, job.name, [&] {
      method_kernels_.delta(in.dtype, input_ptr(plan_, in, elem), s->base.data(), d, n);
    });
  }

  // The sample pass: one tile's |delta| bits into each selecting model's sample.
  void sample_tile(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    // Plain names, not bindings: the tile loop's lambda captures them.
    const uint64_t n_tiles = sample_shape(job).first, n_sampled = sample_shape(job).second;
    const uint64_t stride = sample_stride(job);
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      // Tile t = floor(i * n_tiles / n_sampled) is slot i = ceil(t * n_sampled / n_tiles).
      uint64_t slot = (elem / kTile * n_sampled + n_tiles - 1) / n_tiles;
      for (size_t k = 0; k < job.models.size(); ++k) {
        ModelState& ms = st.models[k];
        if (ms.sample.empty()) continue;
        load_delta(job, k, elem, n, s);
        uint32_t* dst = ms.sample.data() + slot * (kTile / stride);  // each slot is one thread's
        for (size_t i = 0; i < n; i += stride) dst[i / stride] = abs_bits(s->x[i]);
      }
    });
    if (n_sampled == n_tiles) return;  // whole chunks: the pool releases their pages
    // The kernel maps the neighbours of every faulted page too (fault-around, 64 KiB):
    // unmap them soon, or a batch's samples would hold hundreds of MiB of pages.
    if (s->sampled.job != item.job) release_sampled(s);
    if (s->sampled.tiles++ == 0) {
      s->sampled.job = item.job;
      s->sampled.first = item.first_elem;
    }
    s->sampled.end = item.first_elem + item.n_elems;  // a thread's items come in order
    if (s->sampled.tiles == kSampleReleaseTiles) release_sampled(s);
  }

  // Unmaps the pages around the sampled tiles of `s` not yet released.
  void release_sampled(TaskScratch* s) const {
    if (s->sampled.tiles == 0) return;
    const TaskJob& job = jobs_[s->sampled.job];
    for (const JobInput& in : inputs_[s->sampled.job]) {
      uint64_t around = (256u << 10) / item_n_bytes(in.dtype);
      uint64_t first = s->sampled.first > around ? s->sampled.first - around : 0;
      uint64_t last = std::min(job.n_elems, s->sampled.end + around);
      touch_input(plan_, in, first, last - first, false);
    }
    s->sampled.tiles = 0;
  }

  // The window pass: per chunk, the elements above each window counted and those
  // inside recorded in index order (per tile counts in tile_in_bin).
  void window_scan(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    size_t chunk = static_cast<size_t>(item.first_elem / chunk_elems_);
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      for (size_t k = 0; k < job.models.size(); ++k) {
        ModelState& ms = st.models[k];
        if (!ms.lo.windowed && !ms.hi.windowed) continue;
        // Both bounds' windows from one read of the model's tile.
        Selection* sels[kMaxWindows];
        ScanWindow windows[kMaxWindows];
        size_t n_windows = 0;
        for (Selection* sel : {&ms.lo, &ms.hi}) {
          if (!sel->windowed) continue;
          ScanWindow& w = windows[n_windows];
          w.w_lo = sel->w_lo;
          w.w_hi = sel->w_hi;
          w.found = s->in_window.data() + n_windows * (kTile + kWindowSlack);
          sels[n_windows++] = sel;
        }
        const JobInput& in = job.models[k].input;
        guard_reads(plan_, job.name, [&] {
          method_kernels_.window_scan(in.dtype, input_ptr(plan_, in, elem), s->base.data(), n,
                                      windows, n_windows);
        });
        for (size_t w = 0; w < n_windows; ++w) {
          Selection* sel = sels[w];
          size_t count = windows[w].count;
          sel->chunk_above[chunk] += windows[w].above;  // each chunk and tile is written by one thread
          if (st.window_overflow.load(std::memory_order_relaxed)) continue;
          if (st.window_recorded.fetch_add(count) + count > st.window_max) {
            st.window_overflow.store(true);  // far more than sampled: the histograms decide
            continue;
          }
          std::vector<uint32_t>& bits = sel->chunk_bits[chunk];
          bits.insert(bits.end(), windows[w].found, windows[w].found + count);
          sel->tile_in_bin[elem / kTile] = static_cast<uint32_t>(count);
        }
      }
    });
  }

  void histogram_hi(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    size_t n_models = job.models.size();
    constexpr uint64_t kPerModel = kHiHistCopies * kHiBins;
    s->hist.assign(n_models * kPerModel, 0);
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      for (size_t k = 0; k < n_models; ++k) {
        if (!st.models[k].needs_histograms()) continue;
        load_delta(job, k, elem, n, s);
        method_kernels_.histogram_hi(s->x.data(), n, s->hist.data() + k * kPerModel);
      }
    });
    std::lock_guard<std::mutex> guard(st.mu);
    for (size_t k = 0; k < n_models; ++k) {
      if (!st.models[k].needs_histograms()) continue;
      const uint32_t* h = s->hist.data() + k * kPerModel;
      uint64_t* g = st.models[k].hist_hi.data();
      for (size_t c = 0; c < kHiHistCopies; ++c)
        for (uint32_t b = 0; b < kHiBins; ++b) g[b] += h[c * kHiBins + b];
    }
  }

  void histogram_lo(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    size_t n_models = job.models.size();
    s->hist.assign(2 * n_models * kLoBins, 0);
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      for (size_t k = 0; k < n_models; ++k) {
        ModelState& ms = st.models[k];
        if (!ms.needs_histograms()) continue;
        load_delta(job, k, elem, n, s);
        int which = 0;
        for (Selection* sel : {&ms.lo, &ms.hi}) {
          uint32_t* h = s->hist.data() + (2 * k + which++) * kLoBins;
          if (!sel->active() || sel->resolved) continue;
          uint16_t* found = sel->recorded ? s->found.data() : nullptr;
          size_t count = method_kernels_.histogram_lo(s->x.data(), n, sel->hi_bin, h, found);
          if (!found) continue;
          // each chunk and tile is written by one thread
          std::vector<uint16_t>& lo = sel->chunk_lo[item.first_elem / chunk_elems_];
          lo.insert(lo.end(), found, found + count);
          sel->tile_in_bin[elem / kTile] = static_cast<uint32_t>(count);
        }
      }
    });
    std::lock_guard<std::mutex> guard(st.mu);
    for (size_t k = 0; k < n_models; ++k) {
      ModelState& ms = st.models[k];
      int which = 0;
      for (Selection* sel : {&ms.lo, &ms.hi}) {
        const uint32_t* h = s->hist.data() + (2 * k + which++) * kLoBins;
        if (!sel->active() || sel->resolved) continue;
        for (uint32_t b = 0; b < kLoBins; ++b) sel->hist_lo[b] += h[b];
      }
    }
  }

  void count_ties(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      for (size_t k = 0; k < job.models.size(); ++k) {
        ModelState& ms = st.models[k];
        auto counts = [](const Selection& sel) {
          return sel.need_ties && !sel.recorded && !sel.resolved;
        };
        if (!counts(ms.lo) && !counts(ms.hi)) continue;
        load_delta(job, k, elem, n, s);
        for (Selection* sel : {&ms.lo, &ms.hi}) {
          if (!counts(*sel)) continue;
          // each tile is written by one thread
          sel->tie_prefix[elem / kTile] = method_kernels_.count_equal(s->x.data(), n, sel->threshold);
        }
      }
    });
  }

  // The norm pass's sparsification of one tile of model k's delta, in place: dropped
  // elements become +0, kept ones stay as they are (rescaling comes after the norms).
  // DARE's decisions are drawn here once and recorded in ms.keep when it has room, so
  // the apply pass reads them back (TileSparsify::kKept) instead of drawing again.
  void sparsify_for_norms(const TaskJob& job, size_t k, ModelState& ms, uint64_t elem,
                          size_t n, float* d) {
    if (job.sparsify == Sparsify::kRandom) {
      uint64_t* keep = ms.keep.empty() ? nullptr : ms.keep.data() + elem / 64;  // tiles: whole words
      uint64_t stream = dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(k));
      method_kernels_.sparsify_random(d, n, stream, elem, job.models[k].density, false, keep);
      rng_draws_.fetch_add(n, std::memory_order_relaxed);
    } else if (job.sparsify != Sparsify::kNone) {
      RankWindowBound lo = bound_at(ms.lo, elem / kTile), hi = bound_at(ms.hi, elem / kTile);
      method_kernels_.sparsify_rank(d, n, &lo, &hi);
    }
  }

  // DARE's norm sums of models [first, first + block) over a whole group by the fused
  // kernel when the set has one (false: compose them).
  bool dare_norms(const TaskJob& job, JobState& st, size_t first, size_t block, uint64_t elem,
                  size_t n, TaskScratch* s, double* sums) {
    if (!method_kernels_.dare_norms || job.sparsify != Sparsify::kRandom || n != kGroupElems)
      return false;
    DareNormModel models[kL1Models];
    for (size_t b = 0; b < block; ++b) {
      const TaskModel& m = job.models[first + b];
      ModelState& ms = st.models[first + b];
      models[b] = {m.input.dtype, input_ptr(plan_, m.input, elem),
                   dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(first + b)),
                   m.density, ms.keep.empty() ? nullptr : ms.keep.data() + elem / 64};
    }
    bool done = false;
    guard_reads(plan_, job.name, [&] {
      done = method_kernels_.dare_norms(models, block, s->base.data(), elem, sums);
    });
    if (done) rng_draws_.fetch_add(n * block, std::memory_order_relaxed);
    return done;
  }

  void l1_norms(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    // kGramTiles tiles side by side, zero-padded: one fp64 lane per tile; the deltas
    // of kL1Models models before and after sparsifying summed in one call.
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      for (size_t first = 0; first < job.models.size(); first += kL1Models) {
        size_t block = std::min(kL1Models, job.models.size() - first);
        double sums[2 * kL1Models * kGramTiles];
        if (!dare_norms(job, st, first, block, elem, n, s, sums))
          composed_norms(job, st, first, block, elem, n, s, sums);
        for (size_t b = 0; b < block; ++b) {
          ModelState& ms = st.models[first + b];
          for (size_t t = 0; t * kTile < n; ++t) {  // each tile is written by one thread
            ms.l1_before[elem / kTile + t] = sums[2 * b * kGramTiles + t];
            ms.l1_after[elem / kTile + t] = sums[(2 * b + 1) * kGramTiles + t];
          }
        }
      }
    }, kGroupElems);
  }

  // The norm sums of models [first, first + block) over one group of n elements from
  // the staged deltas: delta, its sparsification, then l1_sums of both.
  void composed_norms(const TaskJob& job, JobState& st, size_t first, size_t block,
                      uint64_t elem, size_t n, TaskScratch* s, double* sums) {
    const float* arrays[2 * kL1Models];
    for (size_t b = 0; b < block; ++b) {
      size_t k = first + b;
      float* x = s->x.data() + b * kGroupElems;
      float* kept = s->kept.data() + b * kGroupElems;
      std::fill(x + n, x + kGroupElems, 0.0f);
      std::fill(kept + n, kept + kGroupElems, 0.0f);
      load_delta(job, k, elem, n, s, x);
      std::memcpy(kept, x, n * sizeof(float));
      for (size_t t = 0; t * kTile < n; ++t)
        sparsify_for_norms(job, k, st.models[k], elem + t * kTile,
                           std::min<size_t>(kTile, n - t * kTile), kept + t * kTile);
      arrays[2 * b] = x;
      arrays[2 * b + 1] = kept;
    }
    method_kernels_.l1_sums(arrays, 2 * block, sums);
  }

  void apply(const Item& item, TaskScratch* s) {
    const TaskJob& job = jobs_[item.job];
    JobState& st = *states_[item.job - batch_begin_];
    const Sink& sink = plan_.sinks[job.sink];
    size_t n_models = job.models.size();
    uint64_t out_size = item_n_bytes(job.out_dtype);
    uint64_t out_offset = job.out_offset + item.first_elem * out_size;
    uint64_t out_n_bytes = item.n_elems * out_size;
    SinkSpan span(sink, out_offset, out_n_bytes, &s->out);
    uint8_t* out = span.out_span();
    // Unmasked divisor: the weights summed in model order (fp32).
    float weight_sum = 0.0f;
    for (const TaskModel& m : job.models) weight_sum = weight_sum + m.input.weight;
    std::vector<float> weights;
    for (const TaskModel& m : job.models) weights.push_back(m.input.weight);
    TaskTile tile;
    tile.mix.consensus = job.consensus == Consensus::kSum     ? MixConsensus::kSum
                         : job.consensus == Consensus::kCount ? MixConsensus::kCount
                                                              : MixConsensus::kNone;
    tile.mix.normalize = job.normalize;
    tile.mix.lambda = job.lambda;
    tile.mix.plain_divisor = mix_plain_divisor(weight_sum);
    tile.mix.weights = weights.data();
    tile.models = s->tile_models.data();
    tile.n_models = n_models;
    tile.wd = s->wd.data();
    tile.sparsify = tile_sparsify(job, st);
    for (size_t k = 0; k < n_models; ++k) {
      const TaskModel& m = job.models[k];
      const ModelState& ms = st.models[k];
      TileModel& tm = tile.models[k];
      tm = TileModel();
      tm.dtype = m.input.dtype;
      tm.stream = dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(k));
      tm.density = m.density;
      tm.by_density = job.rescale == Rescale::kDensity;
      tm.scaled = ms.scaled;
      tm.scale = ms.scale;
      tm.weight = m.input.weight;
    }
    for_each_base_tile(job, item, s, [&](uint64_t elem, size_t n) {
      if (options_.check_finite) check_finite_input(plan_, job.name, job.base, elem, n);
      tile.elem = elem;
      for (size_t k = 0; k < n_models; ++k) {
        const JobInput& in = job.models[k].input;
        if (options_.check_finite) check_finite_input(plan_, job.name, in, elem, n);
        TileModel& tm = tile.models[k];
        const ModelState& ms = st.models[k];
        tm.src = input_ptr(plan_, in, elem);
        if (tile.sparsify == TileSparsify::kRank) {
          tm.lo = bound_at(ms.lo, elem / kTile);
          tm.hi = bound_at(ms.hi, elem / kTile);
        }
        if (tile.sparsify == TileSparsify::kKept) tm.keep = ms.keep.data() + elem / 64;  // tiles: whole words
      }
      float* mixed = s->x.data();
      guard_reads(plan_, job.name, [&] { method_kernels_.task_tile(tile, s->base.data(), mixed, n); });
      if (tile.sparsify == TileSparsify::kRandom) rng_draws_.fetch_add(n * n_models, std::memory_order_relaxed);
      uint8_t* dst = out + (elem - item.first_elem) * out_size;
      kernels_.store(job.out_dtype, mixed, 1.0f, dst, n);
      if (options_.check_finite)
        check_finite_output(sink, job.name, job.out_dtype, dst, n, elem);
    });
    span.commit();
  }

  // How the apply pass sparsifies job's deltas: DARE reads the norm pass's recorded
  // decisions when it kept them (every model of a job records, or none).
  static TileSparsify tile_sparsify(const TaskJob& job, const JobState& st) {
    switch (job.sparsify) {
      case Sparsify::kNone:
        return TileSparsify::kNone;
      case Sparsify::kRandom:
        return !st.models.empty() && !st.models[0].keep.empty() ? TileSparsify::kKept
                                                                 : TileSparsify::kRandom;
      default:
        return TileSparsify::kRank;
    }
  }

  const Plan& plan_;
  const std::vector<TaskJob>& jobs_;
  const EngineOptions& options_;
  const KernelSet& kernels_;
  const MethodKernels& method_kernels_;
  int threads_;
  std::unique_ptr<ChunkPool> pool_;
  uint64_t chunk_elems_ = 0;
  std::vector<std::vector<JobInput>> inputs_;
  std::vector<TaskScratch> scratch_;
  std::vector<std::unique_ptr<JobState>> states_;
  size_t batch_begin_ = 0;
  std::atomic<uint64_t> rng_draws_{0};
  uint64_t ranks_sampled_ = 0, ranks_histogrammed_ = 0;
  // Memory of finished samples, handed to the next batch's (within its state share).
  std::vector<std::vector<uint32_t>> spare_samples_;
};

}  // namespace

uint64_t tensor_key(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

uint32_t dare_u24(uint64_t seed, uint64_t key, uint32_t model, uint64_t elem) {
  return dare_draw(dare_stream(seed, key, model), elem);
}

void validate_task_job(const Plan& plan, const TaskJob& job) {
  validate_input(plan, job.name, job.base, job.n_elems, true);
  for (const TaskModel& m : job.models) {
    validate_input(plan, job.name, m.input, job.n_elems, true);
    LADLE_CHECK(m.input.weight == m.input.weight, ErrorKind::kValue, "tensor '%s': NaN weight",
                job.name.c_str());
    LADLE_CHECK(m.density >= 0.0f && m.density <= 1.0f, ErrorKind::kValue,
                "tensor '%s': density %g outside [0, 1]", job.name.c_str(), (double)m.density);
    LADLE_CHECK(m.rank_lo <= m.rank_hi && m.rank_hi <= job.n_elems, ErrorKind::kValue,
                "tensor '%s': kept rank range [%llu, %llu) outside [0, %llu]", job.name.c_str(),
                (unsigned long long)m.rank_lo, (unsigned long long)m.rank_hi,
                (unsigned long long)job.n_elems);
  }
  validate_output(plan, job.name, job.sink, job.out_offset, job.out_dtype, job.n_elems, true);
}

void validate_gram_job(const Plan& plan, const GramJob& job) {
  LADLE_CHECK(job.base < static_cast<int32_t>(job.inputs.size()), ErrorKind::kValue,
              "tensor '%s': base index %d out of range", job.name.c_str(), job.base);
  for (const JobInput& in : job.inputs) validate_input(plan, job.name, in, job.n_elems, true);
}

RunStats run_task_jobs(const Plan& plan, const std::vector<TaskJob>& jobs,
                       const EngineOptions& options, const ProgressFn& progress) {
  for (const TaskJob& job : jobs) validate_task_job(plan, job);
  TaskRunner runner(plan, jobs, options);
  return runner.run(progress);
}

std::vector<std::vector<double>> run_gram_jobs(const Plan& plan, const std::vector<GramJob>& jobs,
                                               const EngineOptions& options,
                                               const ProgressFn& progress, RunStats* stats) {
  auto t0 = std::chrono::steady_clock::now();
  const KernelSet& kernels = select_kernels(options.kernel);
  const MethodKernels& method_kernels = select_method_kernels(options.kernel);
  int threads = resolve_threads(options.threads);
  std::vector<std::vector<JobInput>> inputs(jobs.size());
  uint64_t per_elem = 1, total = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const GramJob& job = jobs[j];
    validate_gram_job(plan, job);
    uint64_t bytes = 0;
    for (const JobInput& in : job.inputs) {
      bytes += 2 * item_n_bytes(in.dtype);
      total += job.n_elems * item_n_bytes(in.dtype);
    }
    per_elem = std::max(per_elem, bytes);
    inputs[j] = job.inputs;
  }
  uint64_t chunk_elems = method_chunk_elems(per_elem, options, threads, state_limit(options));
  ChunkPool pool(plan, threads, 1, progress, total);
  std::vector<std::vector<double>> result(jobs.size());
  auto n_vectors = [&](const GramJob& job) {
    return job.inputs.size() - (job.base >= 0 ? 1 : 0);
  };
  size_t begin = 0;
  uint64_t n_chunks = 0;
  while (begin < jobs.size()) {
    // Batch: per-tile partial sums of every pair, bounded by state_limit().
    size_t end = begin;
    uint64_t bytes = 0;
    while (end < jobs.size()) {
      uint64_t m = n_vectors(jobs[end]);
      uint64_t b = m * (m + 1) / 2 * (jobs[end].n_elems / kTile + 1) * sizeof(double);
      if (end > begin && bytes + b > state_limit(options)) break;
      bytes += b;
      ++end;
    }
    std::vector<std::vector<double>> partials(end - begin);  // [pair * n_tiles + tile]
    std::vector<Item> items;
    for (size_t j = begin; j < end; ++j) {
      uint64_t m = n_vectors(jobs[j]);
      partials[j - begin].assign(m * (m + 1) / 2 * (jobs[j].n_elems / kTile + 1), 0.0);
      for (uint64_t f = 0; f < jobs[j].n_elems; f += chunk_elems)
        items.push_back({static_cast<uint32_t>(j), f, std::min(chunk_elems, jobs[j].n_elems - f)});
    }
    n_chunks += items.size();
    std::vector<std::vector<float>> scratch(threads);
    pool.run(items, [&](const Item& item) -> const std::vector<JobInput>& { return inputs[item.job]; },
             [&](const Item& item, int thread) {
      const GramJob& job = jobs[item.job];
      size_t n_in = job.inputs.size(), m = n_vectors(job), n_pairs = m * (m + 1) / 2;
      constexpr uint64_t kGroup = kGramTiles * kTile;
      std::vector<float>& buf = scratch[thread];
      buf.resize(n_in * kGroup);
      uint64_t n_tiles = job.n_elems / kTile + 1;
      double* part = partials[item.job - begin].data();
      std::vector<const float*> v;
      std::vector<double> sums(n_pairs * kGramTiles);
      for (uint64_t g = 0; g < item.n_elems; g += kGroup) {
        // kGramTiles tiles side by side, each input's zero-padded to whole tiles.
        size_t n = static_cast<size_t>(std::min<uint64_t>(kGroup, item.n_elems - g));
        uint64_t elem = item.first_elem + g;
        // Vectors: inputs in order, the base (loaded first) skipped and subtracted from
        // the others as they are read (fp32(x) - base: the delta kernel).
        const float* b = job.base >= 0 ? buf.data() + job.base * kGroup : nullptr;
        bool fused = false;  // a whole group read straight from the files (gram_inputs)
        guard_reads(plan, job.name, [&] {
          if (b)
            kernels.accumulate(job.inputs[job.base].dtype, input_ptr(plan, job.inputs[job.base], elem),
                               1.0f, buf.data() + job.base * kGroup, n, true);
          if (n == kGroup && method_kernels.gram_inputs) {
            GramInput from[kGramFusedInputs];
            size_t k = 0;
            for (size_t a = 0; a < n_in && k < kGramFusedInputs; ++a)
              if (static_cast<int32_t>(a) != job.base)
                from[k++] = {job.inputs[a].dtype, input_ptr(plan, job.inputs[a], elem)};
            fused = m <= kGramFusedInputs && method_kernels.gram_inputs(from, m, b, sums.data());
          }
          if (fused) return;
          for (size_t a = 0; a < n_in; ++a) {
            if (static_cast<int32_t>(a) == job.base) continue;
            const uint8_t* src = input_ptr(plan, job.inputs[a], elem);
            float* x = buf.data() + a * kGroup;
            if (b) method_kernels.delta(job.inputs[a].dtype, src, b, x, n);
            else kernels.accumulate(job.inputs[a].dtype, src, 1.0f, x, n, true);
          }
        });
        if (fused) {
          for (uint64_t t = 0; t < kGramTiles; ++t)
            for (size_t p = 0; p < n_pairs; ++p)
              part[p * n_tiles + (elem / kTile + t)] = sums[p * kGramTiles + t];
          continue;
        }
        // Short jobs (per-row statistics) fit one tile: summed directly below, no padding.
        bool one_tile = n <= kTile;
        for (size_t a = 0; a < n_in && !one_tile; ++a)
          std::fill(buf.begin() + a * kGroup + n, buf.begin() + (a + 1) * kGroup, 0.0f);
        v.clear();
        for (size_t a = 0; a < n_in; ++a)
          if (static_cast<int32_t>(a) != job.base) v.push_back(buf.data() + a * kGroup);
        if (one_tile) {
          gram_short(v.data(), m, n, sums.data());
          for (size_t p = 0; p < n_pairs; ++p) part[p * n_tiles + elem / kTile] = sums[p];
          continue;
        }
        method_kernels.gram(v.data(), m, sums.data());
        for (uint64_t t = 0; t * kTile < n; ++t)
          for (size_t p = 0; p < n_pairs; ++p)
            part[p * n_tiles + (elem / kTile + t)] = sums[p * kGramTiles + t];
      }
    });
    for (size_t j = begin; j < end; ++j) {
      uint64_t m = n_vectors(jobs[j]), n_tiles = jobs[j].n_elems / kTile + 1;
      std::vector<double>& gram = result[j];
      gram.assign(m * m, 0.0);
      const double* part = partials[j - begin].data();
      size_t pair = 0;
      for (size_t a = 0; a < m; ++a) {
        for (size_t b = a; b < m; ++b, ++pair) {
          double sum = 0.0;
          for (uint64_t t = 0; t < n_tiles; ++t) sum += part[pair * n_tiles + t];
          gram[a * m + b] = gram[b * m + a] = sum;
        }
      }
    }
    begin = end;
  }
  pool.finish();
  if (stats) {
    stats->bytes_read = pool.bytes_read();
    stats->n_chunks = n_chunks;
    stats->chunk_elems = chunk_elems;
    stats->threads = threads;
    stats->kernel = kernels.name;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return result;
}

}  // namespace ladle
