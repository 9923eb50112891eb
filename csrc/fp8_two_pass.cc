#include "fp8_two_pass.h"

#include <algorithm>
#include <cstring>

#include "common.h"
#include "fp8_requant.h"

namespace ladle {
namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

uint64_t n_blocks(const Job& job) {
  const OutScale& s = job.out_scale;
  return ceil_div(job.n_elems / s.n_cols, s.block_rows) * ceil_div(s.n_cols, s.block_cols);
}

// Calls fn(i, run, block) for the runs of elements [elem, +n) that lie in one block
// of one row: elements i..i+run of the tile share the scale of `block`.
template <typename Fn>
void for_block_runs(const OutScale& s, uint64_t elem, size_t n, Fn fn) {
  uint64_t blocks_per_row = ceil_div(s.n_cols, s.block_cols);
  uint64_t row = elem / s.n_cols, col = elem % s.n_cols;
  for (size_t i = 0; i < n;) {
    size_t run = static_cast<size_t>(
        std::min<uint64_t>({n - i, s.block_cols - col % s.block_cols, s.n_cols - col}));
    fn(i, run, (row / s.block_rows) * blocks_per_row + col / s.block_cols);
    i += run;
    col += run;
    if (col == s.n_cols) {
      col = 0;
      ++row;
    }
  }
}

void atomic_max(std::atomic<uint32_t>* slot, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  uint32_t seen = slot->load(std::memory_order_relaxed);
  while (bits > seen && !slot->compare_exchange_weak(seen, bits, std::memory_order_relaxed)) {
  }
}

}  // namespace

Fp8TwoPass::Fp8TwoPass(const ChunkSet& chunks)
    : chunks_(chunks), amax_(chunks.plan().jobs.size()), scales_(chunks.plan().jobs.size()) {
  const Plan& plan = chunks.plan();
  for (uint32_t j = 0; j < plan.jobs.size(); ++j) {
    const Job& job = plan.jobs[j];
    if (!fp8_two_pass(job, chunks.chunk_elems())) continue;
    amax_[j] = std::vector<std::atomic<uint32_t>>(n_blocks(job));
    for (auto& a : amax_[j]) a.store(0, std::memory_order_relaxed);  // +0.0f
    ++n_jobs_;
  }
  for (const WorkItem& item : chunks.items())
    if (has(item.job)) items_.push_back(item);
}

void Fp8TwoPass::fold_amax(const KernelSet& kernels, const WorkItem& item, bool check_finite,
                           HostSumScratch* scratch) {
  const Job& job = chunks_.plan().jobs[item.job];
  std::atomic<uint32_t>* amax = amax_[item.job].data();
  for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
    uint64_t elem = item.first_elem + t;
    merged_tile(chunks_, kernels, job, elem, n, check_finite, scratch, scratch->values);
    const float* x = scratch->values;
    for_block_runs(job.out_scale, elem, n, [&](size_t i, size_t run, uint64_t block) {
      atomic_max(&amax[block], kernels.amax(x + i, run, 0.0f));
    });
  }
}

void Fp8TwoPass::write_scales() {
  const Plan& plan = chunks_.plan();
  std::vector<uint8_t> staging;
  for (uint32_t j = 0; j < plan.jobs.size(); ++j) {
    if (!has(j)) continue;
    const Job& job = plan.jobs[j];
    const OutScale& os = job.out_scale;
    std::vector<float>& scales = scales_[j];
    scales.resize(amax_[j].size());
    for (size_t b = 0; b < scales.size(); ++b) {
      uint32_t bits = amax_[j][b].load(std::memory_order_relaxed);
      float amax;
      std::memcpy(&amax, &bits, 4);
      scales[b] = merged_scale(plan, job, amax);
    }
    SinkSpan span(plan.sinks[os.sink], os.offset, scales.size() * item_n_bytes(os.dtype),
                  &staging);
    store_scales(scales.data(), scales.size(), os.dtype, span.out_span());
    span.commit();
  }
}

void Fp8TwoPass::quantize(const KernelSet& kernels, const WorkItem& item, bool check_finite,
                          uint8_t* out, HostSumScratch* scratch) const {
  const Job& job = chunks_.plan().jobs[item.job];
  const float* scales = scales_[item.job].data();
  for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
    uint64_t elem = item.first_elem + t;
    merged_tile(chunks_, kernels, job, elem, n, check_finite, scratch, scratch->values);
    const float* x = scratch->values;
    uint8_t* q = out + t;
    for_block_runs(job.out_scale, elem, n, [&](size_t i, size_t run, uint64_t block) {
      kernels.quantize_e4m3(x + i, scales[block], q + i, run);
    });
  }
}

}  // namespace ladle
