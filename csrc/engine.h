// The streaming engine: runs a Plan chunk by chunk on a pool of threads with a
// bounded memory budget, prefetching input ranges ahead and releasing them behind.
#pragma once

#include <cstdint>
#include <functional>

#include "kernels.h"
#include "plan.h"

namespace ladle {

struct EngineOptions {
  int threads = 0;                         // 0: all hardware threads
  uint64_t memory_budget = 256ull << 20;   // bytes of buffers + resident input pages
  uint64_t chunk_elems = 0;                // 0: derive from the budget
  bool check_finite = false;               // raise on NaN/Inf in inputs or outputs
  KernelImpl kernel = KernelImpl::kAuto;
};

struct RunStats {
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t n_chunks = 0;
  uint64_t chunk_elems = 0;
  int threads = 0;
  double seconds = 0;
  const char* kernel = "";
  uint64_t rng_draws = 0;  // DARE keep decisions drawn (each element's once per model)
  // Rank thresholds (TIES, breadcrumbs) found from a sample or its window, and those
  // whose window missed (or did not fit the budget) and took the histogram passes.
  uint64_t ranks_sampled = 0;
  uint64_t ranks_histogrammed = 0;
  uint64_t fp8_two_pass = 0;  // --dtype fp8 tensors summed twice (block row > chunk)
  uint64_t host_sums = 0;     // CUDA engine: weighted sums it computed on the host
};

// Called from the thread that called run() every ~100 ms and once at the end
// with (bytes done, bytes total); returning false cancels the run.
using ProgressFn = std::function<bool(uint64_t done, uint64_t total)>;

RunStats run_plan(const Plan& plan, const EngineOptions& options, const ProgressFn& progress);

// The CPU backend runs every job kind.
inline bool supports(JobKind) { return true; }

// Chunk length (elements) the engine uses for `plan` under `options`.
uint64_t choose_chunk_elems(const Plan& plan, const EngineOptions& options, int threads);

}  // namespace ladle
