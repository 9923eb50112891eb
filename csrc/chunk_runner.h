// What the CPU and CUDA engines share: cutting a Plan's jobs into chunks, the
// per-chunk input bookkeeping (pointers, prefetch ahead, release behind, bus
// errors from truncated files), pass-through and finiteness checks, and the
// worker pool that stops at the first error and reports progress.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {

inline uint64_t item_n_bytes(DType dtype) {
  return static_cast<uint64_t>(dtype_bits(dtype) / 8);
}

struct WorkItem {
  uint32_t job;
  uint64_t first_elem;
  uint64_t n_elems;
};

// The one validation of every runner's jobs. An input of tensor `name` with n_elems
// elements: its source exists, its byte range lies inside it and (when `arithmetic`)
// its dtype is a float type; errors name the file and the tensor.
void validate_input(const Plan& plan, const std::string& name, const JobInput& in,
                    uint64_t n_elems, bool arithmetic);
// An output of tensor `name`: the sink exists and [out_offset, +n_elems of out_dtype)
// lies inside it (and, when `arithmetic`, out_dtype can hold merged values).
void validate_output(const Plan& plan, const std::string& name, uint32_t sink,
                     uint64_t out_offset, DType out_dtype, uint64_t n_elems, bool arithmetic);

// Elements per chunk for every runner, so that `memory_budget` means all bytes in
// flight: `workers` chunks of `per_elem_bytes` each (input pages of the current and
// of the prefetched chunks, output staging, per-element scratch) fit the budget;
// rounded down to a multiple of `granule` and clamped to [min_elems, max_elems].
uint64_t budget_chunk_elems(uint64_t memory_budget, uint64_t per_elem_bytes, uint64_t workers,
                            uint64_t granule, uint64_t min_elems, uint64_t max_elems);

// The longest chunk a CPU runner takes, whatever the budget: measured on 4 bf16
// inputs of 0.5 GB (2 threads), chunks of 2^21 elements and more spend ~50% more
// time in the kernel (mapping, releasing and writing their pages) than chunks of
// 2^19-2^20, and a pass's last chunk keeps the other threads waiting longer.
constexpr uint64_t kCpuMaxChunkElems = 1ull << 20;

// Where one chunk's output goes: straight into a memory sink, or into per-thread
// staging that commit() writes to the sink's shard at its offset.
class SinkSpan {
 public:
  SinkSpan(const Sink& sink, uint64_t offset, uint64_t n_bytes, std::vector<uint8_t>* staging);
  uint8_t* out_span() const { return out_; }
  void commit() const;

 private:
  const Sink& sink_;
  uint64_t offset_;
  uint64_t n_bytes_;
  uint8_t* out_;
};

// madvise hint on the mapped range of `in` for elements [first_elem, +n_elems):
// MADV_WILLNEED when `prefetch`, else drop the pages from RSS (memory sources: no-op).
void touch_input(const Plan& plan, const JobInput& in, uint64_t first_elem, uint64_t n_elems,
                 bool prefetch);

// A job with fresh FP8 block scales whose block row does not fit a chunk of
// chunk_elems: summed twice, for the blocks' amax and then to quantize (fp8_two_pass.h).
// Other fp8 jobs are cut into whole block rows and summed once (fp8_requant.h).
inline bool fp8_two_pass(const Job& job, uint64_t chunk_elems) {
  return job.out_scale.present() && job.n_elems > 0 &&
         job.out_scale.block_row_elems(job.n_elems) > chunk_elems;
}

class ChunkSet {
 public:
  ChunkSet(const Plan& plan, uint64_t chunk_elems);

  const Plan& plan() const { return plan_; }
  const std::vector<WorkItem>& items() const { return items_; }
  uint64_t chunk_elems() const { return chunk_elems_; }
  uint64_t total_out_n_bytes() const { return total_out_n_bytes_; }

  const uint8_t* input_ptr(const JobInput& in, uint64_t elem) const;
  uint64_t input_n_bytes(const WorkItem& item) const;
  // madvise hints on the mapped input ranges of `item`.
  void prefetch(const WorkItem& item) const;
  void release(const WorkItem& item) const;

  // Raises MismatchError unless every input of a copy job holds the same bytes
  // in `item`; returns the first input's bytes.
  const uint8_t* check_identical(const WorkItem& item) const;
  // Writes the elementwise max of a max job's inputs in `item` to `out` (which
  // may be one of the inputs: each element is read from all inputs first).
  void elementwise_max(const WorkItem& item, uint8_t* out) const;
  void check_input_finite(const Job& job, const JobInput& in, const void* src, size_t n,
                          uint64_t first_elem) const;
  void check_output_finite(const Job& job, const void* dst, size_t n,
                           uint64_t first_elem) const;

  // guard_reads for the inputs of `job`.
  void guard_inputs(const Job& job, const std::function<void()>& body) const;

 private:
  const Plan& plan_;
  uint64_t chunk_elems_;
  std::vector<WorkItem> items_;
  uint64_t total_out_n_bytes_ = 0;
};

// Runs `body`, turning a SIGBUS from a mapped source of `plan` that shrank (a
// file truncated or rewritten during the run) into an IO error naming the file
// and `tensor`. `body` may throw, but at a fault it must hold no lock and own
// no object with a destructor (plain loads: kernels, memcpy, conversions).
void guard_reads(const Plan& plan, const std::string& tensor, const std::function<void()>& body);

// Element `elem` of input `in` in its mapped source.
const uint8_t* input_ptr(const Plan& plan, const JobInput& in, uint64_t elem);

// Raises kNonFinite naming the input's source, `tensor` and the element when one of
// the `n` elements of `in` from `elem` on is NaN or Inf (reads guarded): the
// --check-finite test of the method runners.
void check_finite_input(const Plan& plan, const std::string& tensor, const JobInput& in,
                        uint64_t elem, size_t n);

// Raises kNonFinite naming the sink, `tensor` and the element when one of the `n`
// merged values at `dst` (element `first_elem` on, written as `dtype`) is NaN or Inf.
void check_finite_output(const Sink& sink, const std::string& tensor, DType dtype,
                         const void* dst, size_t n, uint64_t first_elem);

// Most worker threads a run may ask for (the Python layer refuses more, too).
constexpr int kMaxThreads = 1024;

// The worker count of every runner for a requested `threads`: 0 means every hardware thread;
// negative or more than kMaxThreads is a kValue error, never an abort.
int resolve_threads(int threads);

// Calls process(worker, index) for every index < n_items on n_workers threads
// (after setup(worker) on each), polling progress(bytes_done, total) every
// ~100 ms on the calling thread. The first error (or progress returning false)
// stops every worker and is rethrown here.
void run_workers(size_t n_items, int n_workers, const std::function<void(int)>& setup,
                 const std::function<void(int, size_t)>& process, const ProgressFn& progress,
                 const std::atomic<uint64_t>& bytes_done, uint64_t total_bytes);

// The one chunk loop of every CPU runner (weighted sums, task programs, Gram and dot
// reductions): runs fn(item, worker) for every item on run_workers; keeps the input
// pages of the `depth` * workers items ahead of the cursor prefetched, releases an
// item's pages behind it, counts its input bytes as read and progress(item) bytes
// (default: its input bytes) as done. One total spans every run() of the pool, so a
// multi-pass method reports one progress bar.
class ChunkPool {
 public:
  using InputsOf = std::function<const std::vector<JobInput>&(const WorkItem&)>;
  using BytesOf = std::function<uint64_t(const WorkItem&)>;
  ChunkPool(const Plan& plan, int threads, size_t depth, const ProgressFn& progress,
            uint64_t total_bytes);

  void run(const std::vector<WorkItem>& items, const InputsOf& inputs_of,
           const std::function<void(const WorkItem&, int)>& fn, const BytesOf& progress_of = {});
  // Counts bytes of a pass that turned out to be unnecessary as done.
  void skip(uint64_t n_bytes) { done_.fetch_add(n_bytes); }
  void finish() const;
  int threads() const { return threads_; }
  uint64_t bytes_read() const { return read_.load(); }
  uint64_t bytes_done() const { return done_.load(); }
  // The stats every runner reports of a finished run: bytes read, chunk size,
  // threads, kernel and the seconds since `t0` (the runner adds its own counts).
  RunStats stats(uint64_t chunk_elems, int threads, const char* kernel,
                 std::chrono::steady_clock::time_point t0) const;

 private:
  const Plan& plan_;
  int threads_;
  size_t depth_;
  ProgressFn progress_;
  uint64_t total_;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> read_{0};
};

}  // namespace ladle
