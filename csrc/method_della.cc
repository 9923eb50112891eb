// CPU runner of the DELLA jobs (method_della.h): per block of whole rank groups,
// the magnitude ranks come from a stable radix sort of |delta| bit patterns, the keep
// draws from DARE's counter-based RNG, and the mix from the task program's kernels.
// Blocks are independent and the L1 norms are summed per fixed unit of whole blocks
// in index order, so neither threads nor chunking change a bit.
#include "method_della.h"

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <memory>

#include "chunk_runner.h"
#include "common.h"
#include "kernels.h"
#include "method_kernels.h"
#include "methods.h"

namespace ladle {
namespace {

// L1 partial sums are kept per unit: whole blocks of at least one method tile.
constexpr uint64_t kUnitElems = kMethodTileElems;
constexpr int kRadixBits = 11;
constexpr uint32_t kRadixBins = 1u << kRadixBits;
constexpr uint64_t kStateBytes = 64ull << 20;

constexpr int kRadixPasses = 3;  // 3 x 11 bits cover the 31 bits of |x|

struct Scratch {
  std::vector<float> base, wd, kept, mixed, prob;
  std::vector<uint32_t> count;
  std::vector<uint64_t> sort_a, sort_b;
  // Keep probability by rank, per model, of job `table_job` (every rank group of a
  // job has the same length).
  std::vector<std::vector<float>> table;
  size_t table_job = SIZE_MAX;
  std::vector<uint8_t> out;
};

// For the group d[0], d[stride], ... (n elements): prob[j * stride] = by_rank[r] with r
// the ascending rank of |d[j * stride]| (as bits), equal magnitudes in index order. A
// stable LSD radix sort of (bits, index) pairs; the three digit histograms come from
// one read, and a pass whose digit is the same for every element is skipped.
void probability_by_rank(const float* d, uint64_t stride, uint32_t n, const float* by_rank,
                         float* prob, Scratch* s) {
  std::vector<uint64_t>& a = s->sort_a;
  std::vector<uint64_t>& b = s->sort_b;
  a.resize(n);
  b.resize(n);
  s->count.assign(kRadixPasses * kRadixBins, 0);
  uint32_t* count = s->count.data();
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t bits = abs_bits(d[i * stride]);
    a[i] = (static_cast<uint64_t>(bits) << 32) | i;
    for (int p = 0; p < kRadixPasses; ++p)
      ++count[p * kRadixBins + ((bits >> (p * kRadixBits)) & (kRadixBins - 1))];
  }
  for (int p = 0; p < kRadixPasses; ++p) {
    uint32_t* c = count + p * kRadixBins;
    int shift = 32 + p * kRadixBits;
    if (c[(a[0] >> shift) & (kRadixBins - 1)] == n) continue;
    uint32_t sum = 0;
    for (uint32_t digit = 0; digit < kRadixBins; ++digit) {
      uint32_t here = c[digit];
      c[digit] = sum;
      sum += here;
    }
    for (uint32_t i = 0; i < n; ++i) b[c[(a[i] >> shift) & (kRadixBins - 1)]++] = a[i];
    a.swap(b);
  }
  for (uint32_t r = 0; r < n; ++r) prob[static_cast<uint32_t>(a[r]) * stride] = by_rank[r];
}

using Prune = DellaPrune;
inline Prune prune_of(const DellaModel& m) { return della_prune(m); }

// Scratch one worker holds for a rank block of the job.
uint64_t block_scratch_bytes(const DellaJob& job) {
  uint64_t block = job.group_len * job.group_stride, m = job.models.size();
  return block * 4 * (m + 4) + job.group_len * (4 * m + 16) + kRadixPasses * kRadixBins * 4 +
         block * item_n_bytes(job.out_dtype);
}

class DellaRunner {
 public:
  DellaRunner(const Plan& plan, const std::vector<DellaJob>& jobs, const EngineOptions& options)
      : plan_(plan), jobs_(jobs), options_(options), kernels_(select_kernels(options.kernel)),
        method_kernels_(select_method_kernels(options.kernel)) {}

  static void validate(const Plan& plan, const DellaJob& job) {
    validate_input(plan, job.name, job.base, job.n_elems, true);
    for (const DellaModel& m : job.models) {
      validate_input(plan, job.name, m.input, job.n_elems, true);
      LADLE_CHECK(m.input.weight == m.input.weight, ErrorKind::kValue, "tensor '%s': NaN weight",
                  job.name.c_str());
      if (prune_of(m) == Prune::kMagPrune) {
        float top = m.floor + 2.0f * m.epsilon;
        float lo = std::min(m.floor, top), hi = std::max(m.floor, top);
        LADLE_CHECK(lo > 0.0f && hi <= 1.0f, ErrorKind::kValue,
                    "tensor '%s': della keep probabilities [%g, %g] must lie inside (0, 1)",
                    job.name.c_str(), (double)lo, (double)hi);
      }
    }
    LADLE_CHECK(job.group_len >= 1 && job.group_stride >= 1 && job.group_len <= 0xFFFFFFFFull,
                ErrorKind::kValue, "tensor '%s': rank group of %llu elements (stride %llu)",
                job.name.c_str(), (unsigned long long)job.group_len,
                (unsigned long long)job.group_stride);
    LADLE_CHECK(job.n_elems % (job.group_len * job.group_stride) == 0, ErrorKind::kValue,
                "tensor '%s': %llu elements are not whole rank blocks of %llu", job.name.c_str(),
                (unsigned long long)job.n_elems,
                (unsigned long long)(job.group_len * job.group_stride));
    validate_output(plan, job.name, job.sink, job.out_offset, job.out_dtype, job.n_elems, true);
  }

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t per_elem = 1, scratch_bytes = 0, total = 0;
    inputs_.resize(jobs_.size());
    for (size_t j = 0; j < jobs_.size(); ++j) {
      const DellaJob& job = jobs_[j];
      inputs_[j].push_back(job.base);
      for (const DellaModel& m : job.models) inputs_[j].push_back(m.input);
      uint64_t bytes = item_n_bytes(job.out_dtype), read = 0;
      for (const JobInput& in : inputs_[j]) {
        bytes += 2 * item_n_bytes(in.dtype);  // the chunk's pages and the prefetched ones
        read += job.n_elems * item_n_bytes(in.dtype);
      }
      per_elem = std::max(per_elem, bytes);
      scratch_bytes = std::max(scratch_bytes, block_scratch_bytes(job));
      total += read * (norms(job) ? 2 : 1);
    }
    // Each worker holds one block's scratch; the workers' scratch gets at most half
    // the budget (fewer workers when a block is large), the L1 state a quarter.
    uint64_t half = options_.memory_budget / 2;
    for (const DellaJob& job : jobs_) check_della_block_fits(job, options_.memory_budget);
    int threads = resolve_threads(options_.threads);
    threads = static_cast<int>(std::max<uint64_t>(
        1, std::min<uint64_t>(threads, half / std::max<uint64_t>(1, scratch_bytes))));
    uint64_t reserved = threads * scratch_bytes + state_limit();
    uint64_t left = options_.memory_budget > reserved ? options_.memory_budget - reserved : 0;
    chunk_elems_ = options_.chunk_elems != 0
                       ? options_.chunk_elems
                       : budget_chunk_elems(left, per_elem, threads, 1, kUnitElems, kCpuMaxChunkElems);
    pool_ = std::make_unique<ChunkPool>(plan_, threads, 1, progress, total);
    scratch_.resize(threads);
    size_t begin = 0;
    uint64_t n_chunks = 0;
    while (begin < jobs_.size()) {  // batches whose L1 partial sums fit state_limit()
      size_t end = begin;
      uint64_t bytes = 0;
      cached_.clear();
      while (end < jobs_.size()) {
        uint64_t b = norms(jobs_[end]) ? 2 * jobs_[end].models.size() * n_units(jobs_[end]) * 8 : 0;
        if (end > begin && bytes + b > state_limit()) break;
        bytes += b;
        // The keep masks of pass 1 are kept for pass 2 while they fit too.
        bool cache = norms(jobs_[end]) && bytes + mask_words(jobs_[end]) * 8 <= state_limit();
        bytes += cache ? mask_words(jobs_[end]) * 8 : 0;
        cached_.push_back(cache);
        ++end;
      }
      n_chunks += run_batch(begin, end);
      begin = end;
    }
    pool_->finish();
    RunStats stats = pool_->stats(chunk_elems_, threads, kernels_.name, t0);
    for (const DellaJob& job : jobs_) stats.bytes_written += job.n_elems * item_n_bytes(job.out_dtype);
    stats.n_chunks = n_chunks;
    return stats;
  }

 private:
  uint64_t state_limit() const { return std::min(kStateBytes, options_.memory_budget / 4); }

  static uint64_t block_elems(const DellaJob& job) { return job.group_len * job.group_stride; }
  static uint64_t unit_elems(const DellaJob& job) { return della_unit_elems(job); }
  static uint64_t n_units(const DellaJob& job) {
    return (job.n_elems + unit_elems(job) - 1) / unit_elems(job);
  }
  // Keep-mask words of one model's block, and of the whole job (every model).
  static uint64_t block_words(const DellaJob& job) { return (block_elems(job) + 63) / 64; }
  static uint64_t mask_words(const DellaJob& job) {
    return job.models.size() * (job.n_elems / block_elems(job)) * block_words(job);
  }
  uint64_t* mask_of(const DellaJob& job, size_t k, uint64_t first) {
    size_t j = static_cast<size_t>(&job - jobs_.data()) - batch_begin_;
    if (!cached_[j]) return nullptr;
    uint64_t blocks = job.n_elems / block_elems(job);
    return masks_[j].data() + (k * blocks + first / block_elems(job)) * block_words(job);
  }
  static bool norms(const DellaJob& job) { return della_needs_norms(job); }

  uint64_t run_batch(size_t begin, size_t end) {
    // Items: runs of whole units, about chunk_elems_ long.
    std::vector<WorkItem> items;
    for (size_t j = begin; j < end; ++j) {
      const DellaJob& job = jobs_[j];
      uint64_t unit = unit_elems(job);
      uint64_t step = std::max<uint64_t>(1, chunk_elems_ / unit) * unit;
      for (uint64_t f = 0; f < job.n_elems; f += step)
        items.push_back({static_cast<uint32_t>(j), f, std::min(step, job.n_elems - f)});
    }
    auto inputs_of = [this](const WorkItem& item) -> const std::vector<JobInput>& {
      return inputs_[item.job];
    };
    // Pass 1 (L1 rescale): |delta|_1 and |kept delta|_1 per unit, then per model.
    l1_.assign(end - begin, {});
    masks_.assign(end - begin, {});
    for (size_t j = begin; j < end; ++j)
      if (cached_[j - begin]) masks_[j - begin].assign(mask_words(jobs_[j]), 0);
    std::vector<WorkItem> norm_items;
    for (size_t j = begin; j < end; ++j)
      if (norms(jobs_[j])) l1_[j - begin].assign(2 * jobs_[j].models.size() * n_units(jobs_[j]), 0.0);
    for (const WorkItem& item : items)
      if (norms(jobs_[item.job])) norm_items.push_back(item);
    batch_begin_ = begin;
    pool_->run(norm_items, inputs_of, [this](const WorkItem& item, int t) { l1_pass(item, &scratch_[t]); });
    scales_.assign(end - begin, {});
    for (size_t j = begin; j < end; ++j) {
      const DellaJob& job = jobs_[j];
      scales_[j - begin].assign(job.models.size(), 1.0f);
      if (!norms(job)) continue;
      uint64_t units = n_units(job);
      for (size_t k = 0; k < job.models.size(); ++k) {
        const double* part = l1_[j - begin].data() + 2 * k * units;
        double before = 0.0, after = 0.0;
        for (uint64_t u = 0; u < units; ++u) before += part[u];
        for (uint64_t u = 0; u < units; ++u) after += part[units + u];
        if (prune_of(job.models[k]) == Prune::kMagPrune)
          della_l1_scale(before, after, &scales_[j - begin][k]);
      }
      std::vector<double>().swap(l1_[j - begin]);
    }
    // Pass 2: the per-element program.
    pool_->run(items, inputs_of, [this](const WorkItem& item, int t) { apply(item, &scratch_[t]); });
    return items.size();
  }

  void load_delta(const DellaJob& job, const JobInput& in, uint64_t elem, size_t n,
                  const float* base, float* d) const {
    guard_reads(plan_, job.name, [&] {
      method_kernels_.delta(in.dtype, input_ptr(in, elem), base, d, n);
    });
  }
  void load_base(const DellaJob& job, uint64_t elem, size_t n, float* dst) const {
    guard_reads(plan_, job.name, [&] {
      kernels_.accumulate(job.base.dtype, input_ptr(job.base, elem), 1.0f, dst, n, true);
    });
  }
  const uint8_t* input_ptr(const JobInput& in, uint64_t elem) const {
    return plan_.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
  }

  // MAGPRUNE of model k's delta `d` over the block starting at element `first`:
  // dropped elements become +0; kept ones are divided by their keep probability
  // when `by_probability`.
  // `keep_bits` (when not null) receives bit i set for every kept element i.
  void magprune(const DellaJob& job, size_t k, uint64_t first, float* d, bool by_probability,
                Scratch* s, uint64_t* keep_bits = nullptr) const {
    uint64_t n = block_elems(job), len = job.group_len, stride = job.group_stride;
    size_t j = static_cast<size_t>(&job - jobs_.data());
    if (s->table_job != j) {
      s->table.resize(job.models.size());
      for (size_t q = 0; q < job.models.size(); ++q) {
        const DellaModel& m = job.models[q];
        s->table[q].resize(len);
        for (uint64_t r = 0; r < len; ++r)
          s->table[q][r] = della_keep_probability(r, len, m.floor, m.epsilon);
      }
      s->table_job = j;
    }
    s->prob.resize(n);
    for (uint64_t c = 0; c < stride; ++c)
      probability_by_rank(d + c, stride, static_cast<uint32_t>(len), s->table[k].data(),
                          s->prob.data() + c, s);
    uint64_t stream = dare_stream(job.seed, job.tensor_key, static_cast<uint32_t>(k));
    method_kernels_.sparsify_prob(d, s->prob.data(), n, stream, first, by_probability, keep_bits);
  }

  void l1_pass(const WorkItem& item, Scratch* s) {
    const DellaJob& job = jobs_[item.job];
    std::vector<double>& l1 = l1_[item.job - batch_begin_];
    uint64_t block = block_elems(job), unit = unit_elems(job), units = n_units(job);
    s->base.resize(block);
    s->wd.resize(block);
    s->kept.resize(block);
    for (uint64_t first = item.first_elem; first < item.first_elem + item.n_elems; first += block) {
      load_base(job, first, block, s->base.data());
      uint64_t u = first / unit;  // each unit lies in one item: written by one thread
      for (size_t k = 0; k < job.models.size(); ++k) {
        if (prune_of(job.models[k]) != Prune::kMagPrune) continue;
        const float* d = s->wd.data();
        float* kept = s->kept.data();
        load_delta(job, job.models[k].input, first, block, s->base.data(), s->wd.data());
        std::copy(d, d + block, kept);
        magprune(job, k, first, kept, false, s, mask_of(job, k, first));
        // Both chains in one loop: each is a run of dependent fp64 adds in index order,
        // so two side by side take the time of one.
        double before = l1[2 * k * units + u], after = l1[(2 * k + 1) * units + u];
        for (uint64_t i = 0; i < block; ++i) {
          before += std::fabs(static_cast<double>(d[i]));
          after += std::fabs(static_cast<double>(kept[i]));
        }
        l1[2 * k * units + u] = before;
        l1[(2 * k + 1) * units + u] = after;
      }
    }
  }

  void apply(const WorkItem& item, Scratch* s) {
    const DellaJob& job = jobs_[item.job];
    const std::vector<float>& scales = scales_[item.job - batch_begin_];
    const Sink& sink = plan_.sinks[job.sink];
    size_t n_models = job.models.size();
    uint64_t block = block_elems(job), out_size = item_n_bytes(job.out_dtype);
    SinkSpan span(sink, job.out_offset + item.first_elem * out_size, item.n_elems * out_size,
                  &s->out);
    uint8_t* out = span.out_span();
    float weight_sum = 0.0f;  // the unmasked divisor: weights summed in model order
    std::vector<float> weights;
    for (const DellaModel& m : job.models) {
      weight_sum = weight_sum + m.input.weight;
      weights.push_back(m.input.weight);
    }
    MixSpec spec;
    spec.consensus = job.elect_sign ? MixConsensus::kSum : MixConsensus::kNone;
    spec.normalize = job.normalize;
    spec.lambda = job.lambda;
    spec.plain_divisor = mix_plain_divisor(weight_sum);
    spec.weights = weights.data();
    s->base.resize(block);
    s->wd.resize(block * std::max<size_t>(1, n_models));
    s->mixed.resize(block);
    bool by_probability = job.rescale == DellaRescale::kProbability;
    for (uint64_t first = item.first_elem; first < item.first_elem + item.n_elems; first += block) {
      if (options_.check_finite) check_finite_input(plan_, job.name, job.base, first, block);
      load_base(job, first, block, s->base.data());
      for (size_t k = 0; k < n_models; ++k) {
        const DellaModel& m = job.models[k];
        if (options_.check_finite) check_finite_input(plan_, job.name, m.input, first, block);
        float* wd = s->wd.data() + k * block;
        load_delta(job, m.input, first, block, s->base.data(), wd);
        Prune prune = prune_of(m);
        if (prune == Prune::kDropAll) std::fill(wd, wd + block, 0.0f);
        if (prune == Prune::kMagPrune) {
          const uint64_t* bits = mask_of(job, k, first);
          if (bits != nullptr) {  // pass 1's keep mask of this block
            method_kernels_.sparsify_kept(wd, block, bits, 1.0f, false);
          } else {
            magprune(job, k, first, wd, by_probability, s);
          }
          if (scales[k] != 1.0f) method_kernels_.scale(wd, block, scales[k]);
        }
        method_kernels_.scale(wd, block, m.input.weight);
      }
      method_kernels_.mix(spec, s->wd.data(), block, n_models, s->base.data(), s->mixed.data(),
                          block);
      uint8_t* dst = out + (first - item.first_elem) * out_size;
      kernels_.store(job.out_dtype, s->mixed.data(), 1.0f, dst, block);
      if (options_.check_finite)
        check_finite_output(sink, job.name, job.out_dtype, dst, block, first);
    }
    span.commit();
  }

  const Plan& plan_;
  const std::vector<DellaJob>& jobs_;
  const EngineOptions& options_;
  const KernelSet& kernels_;
  const MethodKernels& method_kernels_;
  std::unique_ptr<ChunkPool> pool_;
  uint64_t chunk_elems_ = 0;
  std::vector<std::vector<JobInput>> inputs_;
  std::vector<Scratch> scratch_;
  std::vector<std::vector<double>> l1_;     // per job of the batch: [2k or 2k+1][unit]
  std::vector<bool> cached_;                 // per job of the batch: masks_ holds its masks
  std::vector<std::vector<uint64_t>> masks_; // per job of the batch: [model][block] words
  std::vector<std::vector<float>> scales_;  // per job of the batch: L1 factor per model
  size_t batch_begin_ = 0;
};

}  // namespace

void check_della_block_fits(const DellaJob& job, uint64_t memory_budget) {
  LADLE_CHECK(block_scratch_bytes(job) <= memory_budget / 2, ErrorKind::kValue,
              "tensor '%s': a della rank block of %llu elements needs %llu bytes of "
              "scratch, over half the memory budget (%llu bytes); raise --memory-budget",
              job.name.c_str(), (unsigned long long)(job.group_len * job.group_stride),
              (unsigned long long)block_scratch_bytes(job), (unsigned long long)memory_budget);
}

uint64_t della_unit_elems(const DellaJob& job) {
  uint64_t block = job.group_len * job.group_stride;
  return std::max<uint64_t>(1, kUnitElems / block) * block;
}

bool della_needs_norms(const DellaJob& job) {
  if (job.rescale != DellaRescale::kL1) return false;
  for (const DellaModel& m : job.models)
    if (prune_of(m) == Prune::kMagPrune) return true;
  return false;
}

void validate_della_job(const Plan& plan, const DellaJob& job) {
  DellaRunner::validate(plan, job);
}

RunStats run_della_jobs(const Plan& plan, const std::vector<DellaJob>& jobs,
                        const EngineOptions& options, const ProgressFn& progress) {
  for (const DellaJob& job : jobs) DellaRunner::validate(plan, job);
  DellaRunner runner(plan, jobs, options);
  return runner.run(progress);
}

}  // namespace ladle
