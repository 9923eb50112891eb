#include "engine.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"
#include "fault_guard.h"
#include "safetensors.h"

namespace ladle {
namespace {

constexpr size_t kTileElems = 2048;  // accumulator tile, stays in L1
constexpr uint64_t kMinChunkElems = 16 * 1024;
constexpr uint64_t kMaxChunkElems = 16ull << 20;

uint64_t item_n_bytes(DType dtype) { return static_cast<uint64_t>(dtype_bits(dtype) / 8); }

struct WorkItem {
  uint32_t job;
  uint64_t first_elem;
  uint64_t n_elems;
};

// Per-thread scratch, allocated once and reused for every chunk.
struct Scratch {
  std::vector<uint8_t> out;
  float acc[kTileElems];
};

class Runner {
 public:
  Runner(const Plan& plan, const EngineOptions& options, int threads, uint64_t chunk_elems)
      : plan_(plan),
        options_(options),
        kernels_(select_kernels(options.kernel)),
        threads_(threads),
        chunk_elems_(chunk_elems) {
    for (uint32_t j = 0; j < plan.jobs.size(); ++j) {
      const Job& job = plan.jobs[j];
      for (uint64_t first = 0; first < job.n_elems; first += chunk_elems)
        items_.push_back({j, first, std::min(chunk_elems, job.n_elems - first)});
      total_bytes_ += job.n_elems * item_n_bytes(job.out_dtype);
    }
  }

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads_; ++t) workers.emplace_back([this] { work(); });
    std::unique_lock<std::mutex> lock(mu_);
    while (finished_workers_ < threads_) {
      done_cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (progress) {
        lock.unlock();
        bool keep_going = true;
        try {
          keep_going = progress(bytes_done_.load(), total_bytes_);
        } catch (...) {
          record_error(std::current_exception());
        }
        if (!keep_going) cancel(Error(ErrorKind::kCancelled, "merge cancelled"));
        lock.lock();
      }
    }
    lock.unlock();
    for (auto& w : workers) w.join();
    if (first_error_) std::rethrow_exception(first_error_);
    if (progress) progress(bytes_done_.load(), total_bytes_);
    RunStats stats;
    stats.bytes_read = bytes_read_.load();
    stats.bytes_written = bytes_done_.load();
    stats.n_chunks = items_.size();
    stats.chunk_elems = chunk_elems_;
    stats.threads = threads_;
    stats.kernel = kernels_.name;
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return stats;
  }

 private:
  void record_error(std::exception_ptr e) {
    std::lock_guard<std::mutex> guard(error_mu_);
    if (!first_error_) first_error_ = e;
    cancelled_.store(true);
  }

  void cancel(const Error& e) { record_error(std::make_exception_ptr(e)); }

  void work() {
    Scratch scratch;
    try {
      while (!cancelled_.load()) {
        uint64_t index = next_item_.fetch_add(1);
        if (index >= items_.size()) break;
        // Ask for the item this thread will most likely take next.
        if (index + threads_ < items_.size()) prefetch(items_[index + threads_]);
        process(items_[index], &scratch);
      }
    } catch (...) {
      record_error(std::current_exception());
    }
    std::lock_guard<std::mutex> guard(mu_);
    ++finished_workers_;
    done_cv_.notify_all();
  }

  void prefetch(const WorkItem& item) const {
    const Job& job = plan_.jobs[item.job];
    for (const JobInput& in : job.inputs) {
      const Source& src = plan_.sources[in.source];
      if (!src.file) continue;
      uint64_t size = item_n_bytes(in.dtype);
      src.file->prefetch(in.offset + item.first_elem * size, item.n_elems * size);
    }
  }

  void release(const WorkItem& item) const {
    const Job& job = plan_.jobs[item.job];
    for (const JobInput& in : job.inputs) {
      const Source& src = plan_.sources[in.source];
      if (!src.file) continue;
      uint64_t size = item_n_bytes(in.dtype);
      src.file->release(in.offset + item.first_elem * size, item.n_elems * size);
    }
  }

  const uint8_t* input_ptr(const JobInput& in, uint64_t elem) const {
    return plan_.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
  }

  void process(const WorkItem& item, Scratch* scratch) {
    const Job& job = plan_.jobs[item.job];
    const Sink& sink = plan_.sinks[job.sink];
    uint64_t out_size = item_n_bytes(job.out_dtype);
    uint64_t out_offset = job.out_offset + item.first_elem * out_size;
    uint64_t out_n_bytes = item.n_elems * out_size;
    uint8_t* out;
    if (sink.writer) {
      if (scratch->out.size() < out_n_bytes) scratch->out.resize(out_n_bytes);
      out = scratch->out.data();
    } else {
      out = sink.base + out_offset;
    }
    compute_guarded(job, item, out, scratch->acc);
    uint64_t read = 0;
    for (const JobInput& in : job.inputs) read += item.n_elems * item_n_bytes(in.dtype);
    if (sink.writer) sink.writer->write_at(out_offset, out, out_n_bytes);
    release(item);
    bytes_read_.fetch_add(read);
    bytes_done_.fetch_add(out_n_bytes);
  }

  // Reads of mapped inputs fault with SIGBUS when a file shrank under its
  // mapping; that becomes an IO error naming the file instead of a crash.
  void compute_guarded(const Job& job, const WorkItem& item, uint8_t* out, float* acc) const {
    struct Args {
      const Runner* self;
      const Job* job;
      const WorkItem* item;
      uint8_t* out;
      float* acc;
    } args{this, &job, &item, out, acc};
    const void* fault = call_catching_sigbus(
        [](void* p) {
          auto* a = static_cast<Args*>(p);
          if (a->job->op == JobOp::kCopyIdentical)
            a->self->copy_identical(*a->job, *a->item, a->out);
          else
            a->self->weighted_sum(*a->job, *a->item, a->out, a->acc);
        },
        &args);
    if (!fault) return;
    auto addr = reinterpret_cast<const uint8_t*>(fault);
    for (const JobInput& in : job.inputs) {
      const Source& src = plan_.sources[in.source];
      if (src.base && addr >= src.base && addr < src.base + src.n_bytes)
        raise(ErrorKind::kIO,
              format("%s: tensor '%s': input changed while being read (bus error at byte %llu "
                     "of %llu): was the file truncated or rewritten during the merge?",
                     src.label.c_str(), job.name.c_str(), (unsigned long long)(addr - src.base),
                     (unsigned long long)src.n_bytes),
              EIO);
    }
    raise(ErrorKind::kIO,
          format("tensor '%s': bus error while reading the inputs (was a file truncated?)",
                 job.name.c_str()),
          EIO);
  }

  void copy_identical(const Job& job, const WorkItem& item, uint8_t* out) const {
    uint64_t size = item_n_bytes(job.out_dtype);
    uint64_t n_bytes = item.n_elems * size;
    const uint8_t* first = input_ptr(job.inputs[0], item.first_elem);
    for (size_t k = 1; k < job.inputs.size(); ++k) {
      const uint8_t* other = input_ptr(job.inputs[k], item.first_elem);
      if (std::memcmp(first, other, n_bytes) == 0) continue;
      uint64_t byte = 0;
      while (first[byte] == other[byte]) ++byte;
      raise(ErrorKind::kMismatch,
            format("tensor '%s' (%s) differs between %s and %s at element %llu; non-float "
                   "tensors are only passed through when identical",
                   job.name.c_str(), dtype_name(job.out_dtype),
                   plan_.sources[job.inputs[0].source].label.c_str(),
                   plan_.sources[job.inputs[k].source].label.c_str(),
                   (unsigned long long)(item.first_elem + byte / size)));
    }
    std::memcpy(out, first, n_bytes);
  }

  void weighted_sum(const Job& job, const WorkItem& item, uint8_t* out, float* acc) const {
    uint64_t out_size = item_n_bytes(job.out_dtype);
    for (uint64_t t = 0; t < item.n_elems; t += kTileElems) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kTileElems, item.n_elems - t));
      uint64_t elem = item.first_elem + t;
      bool first = true;
      for (const JobInput& in : job.inputs) {
        if (in.weight == 0.0f) continue;  // zero weights skip their input entirely
        const uint8_t* src = input_ptr(in, elem);
        if (options_.check_finite) check_input_finite(job, in, src, n, elem);
        kernels_.accumulate(in.dtype, src, in.weight, acc, n, first);
        first = false;
      }
      if (first) std::fill(acc, acc + n, 0.0f);  // every weight was zero
      uint8_t* dst = out + t * out_size;
      kernels_.store(job.out_dtype, acc, job.post_scale, dst, n);
      if (options_.check_finite) check_output_finite(job, dst, n, elem);
    }
  }

  void check_input_finite(const Job& job, const JobInput& in, const uint8_t* src, size_t n,
                          uint64_t elem) const {
    size_t bad = find_nonfinite(in.dtype, src, n);
    LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
                "%s: tensor '%s': non-finite value (NaN or Inf) at element %llu",
                plan_.sources[in.source].label.c_str(), job.name.c_str(),
                (unsigned long long)(elem + bad));
  }

  void check_output_finite(const Job& job, const uint8_t* dst, size_t n, uint64_t elem) const {
    size_t bad = find_nonfinite(job.out_dtype, dst, n);
    LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
                "%s: tensor '%s': merged value at element %llu is not finite (overflow in %s)",
                plan_.sinks[job.sink].label.c_str(), job.name.c_str(),
                (unsigned long long)(elem + bad), dtype_name(job.out_dtype));
  }

  const Plan& plan_;
  const EngineOptions& options_;
  const KernelSet& kernels_;
  int threads_;
  uint64_t chunk_elems_;
  std::vector<WorkItem> items_;
  uint64_t total_bytes_ = 0;

  std::atomic<uint64_t> next_item_{0};
  std::atomic<uint64_t> bytes_done_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<bool> cancelled_{false};
  std::mutex error_mu_;
  std::exception_ptr first_error_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  int finished_workers_ = 0;
};

}  // namespace

void validate_plan(const Plan& plan) {
  for (const Job& job : plan.jobs) {
    LADLE_CHECK(job.sink < plan.sinks.size(), ErrorKind::kValue,
                "tensor '%s': sink index %u out of range", job.name.c_str(), job.sink);
    const Sink& sink = plan.sinks[job.sink];
    uint64_t out_n_bytes = tensor_n_bytes(job.out_dtype, job.n_elems, "tensor '" + job.name + "'");
    LADLE_CHECK(job.out_offset <= sink.n_bytes && out_n_bytes <= sink.n_bytes - job.out_offset,
                ErrorKind::kValue,
                "tensor '%s': output range [%llu, +%llu) exceeds %s of %llu bytes",
                job.name.c_str(), (unsigned long long)job.out_offset,
                (unsigned long long)out_n_bytes, sink.label.c_str(),
                (unsigned long long)sink.n_bytes);
    LADLE_CHECK(!job.inputs.empty(), ErrorKind::kValue, "tensor '%s': no inputs",
                job.name.c_str());
    for (const JobInput& in : job.inputs) {
      LADLE_CHECK(in.source < plan.sources.size(), ErrorKind::kValue,
                  "tensor '%s': source index %u out of range", job.name.c_str(), in.source);
      const Source& src = plan.sources[in.source];
      uint64_t in_n_bytes = tensor_n_bytes(in.dtype, job.n_elems, "tensor '" + job.name + "'");
      LADLE_CHECK(in.offset <= src.n_bytes && in_n_bytes <= src.n_bytes - in.offset,
                  ErrorKind::kFormat,
                  "%s: tensor '%s': byte range [%llu, +%llu) exceeds the %llu bytes available",
                  src.label.c_str(), job.name.c_str(), (unsigned long long)in.offset,
                  (unsigned long long)in_n_bytes, (unsigned long long)src.n_bytes);
      if (job.op == JobOp::kWeightedSum) {
        LADLE_CHECK(dtype_is_mergeable(in.dtype), ErrorKind::kValue,
                    "%s: tensor '%s': dtype %s cannot be merged arithmetically",
                    src.label.c_str(), job.name.c_str(), dtype_name(in.dtype));
        LADLE_CHECK(in.weight == in.weight, ErrorKind::kValue, "tensor '%s': NaN weight",
                    job.name.c_str());
      } else {
        LADLE_CHECK(in.dtype == job.out_dtype, ErrorKind::kMismatch,
                    "%s: tensor '%s': dtype %s differs from %s", src.label.c_str(),
                    job.name.c_str(), dtype_name(in.dtype), dtype_name(job.out_dtype));
      }
    }
    if (job.op == JobOp::kWeightedSum)
      LADLE_CHECK(dtype_is_mergeable(job.out_dtype), ErrorKind::kValue,
                  "tensor '%s': cannot write merged values as %s", job.name.c_str(),
                  dtype_name(job.out_dtype));
    LADLE_CHECK(dtype_bits(job.out_dtype) % 8 == 0, ErrorKind::kValue,
                "tensor '%s': sub-byte dtype %s must be planned as bytes", job.name.c_str(),
                dtype_name(job.out_dtype));
  }
}

uint64_t choose_chunk_elems(const Plan& plan, const EngineOptions& options, int threads) {
  if (options.chunk_elems > 0) return options.chunk_elems;
  // Per element in flight: the output staging bytes plus the input pages of the
  // current chunk and of the prefetched next one.
  uint64_t per_elem = 1;
  for (const Job& job : plan.jobs) {
    uint64_t bytes = item_n_bytes(job.out_dtype);
    for (const JobInput& in : job.inputs) bytes += 2 * item_n_bytes(in.dtype);
    per_elem = std::max(per_elem, bytes);
  }
  uint64_t chunk = options.memory_budget / (static_cast<uint64_t>(threads) * per_elem);
  chunk = chunk / 4096 * 4096;
  return std::clamp(chunk, kMinChunkElems, kMaxChunkElems);
}

RunStats run_plan(const Plan& plan, const EngineOptions& options, const ProgressFn& progress) {
  validate_plan(plan);
  int threads = options.threads > 0 ? options.threads
                                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  uint64_t chunk_elems = choose_chunk_elems(plan, options, threads);
  install_sigbus_handler();
  Runner runner(plan, options, threads, chunk_elems);
  return runner.run(progress);
}

}  // namespace ladle
