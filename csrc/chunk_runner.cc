#include "chunk_runner.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#include "common.h"
#include "fault_guard.h"
#include "kernels.h"
#include "safetensors.h"

namespace ladle {

void validate_input(const Plan& plan, const std::string& name, const JobInput& in,
                    uint64_t n_elems, bool arithmetic) {
  LADLE_CHECK(in.source < plan.sources.size(), ErrorKind::kValue,
              "tensor '%s': source index %u out of range", name.c_str(), in.source);
  const Source& src = plan.sources[in.source];
  uint64_t n_bytes = tensor_n_bytes(in.dtype, n_elems, "tensor '" + name + "'");
  LADLE_CHECK(in.offset <= src.n_bytes && n_bytes <= src.n_bytes - in.offset, ErrorKind::kFormat,
              "%s: tensor '%s': byte range [%llu, +%llu) exceeds the %llu bytes available",
              src.label.c_str(), name.c_str(), (unsigned long long)in.offset,
              (unsigned long long)n_bytes, (unsigned long long)src.n_bytes);
  LADLE_CHECK(!arithmetic || dtype_is_mergeable(in.dtype), ErrorKind::kValue,
              "%s: tensor '%s': dtype %s cannot be merged arithmetically", src.label.c_str(),
              name.c_str(), dtype_name(in.dtype));
}

void validate_output(const Plan& plan, const std::string& name, uint32_t sink,
                     uint64_t out_offset, DType out_dtype, uint64_t n_elems, bool arithmetic) {
  LADLE_CHECK(sink < plan.sinks.size(), ErrorKind::kValue,
              "tensor '%s': sink index %u out of range", name.c_str(), sink);
  LADLE_CHECK(!arithmetic || dtype_is_mergeable(out_dtype), ErrorKind::kValue,
              "tensor '%s': cannot write merged values as %s", name.c_str(),
              dtype_name(out_dtype));
  const Sink& s = plan.sinks[sink];
  uint64_t n_bytes = tensor_n_bytes(out_dtype, n_elems, "tensor '" + name + "'");
  LADLE_CHECK(out_offset <= s.n_bytes && n_bytes <= s.n_bytes - out_offset, ErrorKind::kValue,
              "tensor '%s': output range [%llu, +%llu) exceeds %s of %llu bytes", name.c_str(),
              (unsigned long long)out_offset, (unsigned long long)n_bytes, s.label.c_str(),
              (unsigned long long)s.n_bytes);
}

ChunkPool::ChunkPool(const Plan& plan, int threads, size_t depth, const ProgressFn& progress,
                     uint64_t total_bytes)
    : plan_(plan), threads_(threads), depth_(depth), progress_(progress), total_(total_bytes) {}

void ChunkPool::run(const std::vector<WorkItem>& items, const InputsOf& inputs_of,
                    const std::function<void(const WorkItem&, int)>& fn,
                    const BytesOf& progress_of) {
  if (items.empty()) return;
  int n_workers = static_cast<int>(std::min<uint64_t>(threads_, items.size()));
  size_t ahead = depth_ * static_cast<size_t>(n_workers);
  auto touch = [&](const WorkItem& item, bool prefetch) {
    for (const JobInput& in : inputs_of(item))
      touch_input(plan_, in, item.first_elem, item.n_elems, prefetch);
  };
  for (size_t i = 0; i < std::min(ahead, items.size()); ++i) touch(items[i], true);
  ProgressFn clipped;
  if (progress_) {
    clipped = [this](uint64_t done, uint64_t total) {
      return progress_(std::min(done, total), total);
    };
  }
  run_workers(
      items.size(), n_workers, nullptr,
      [&](int worker, size_t index) {
        if (index + ahead < items.size()) touch(items[index + ahead], true);
        const WorkItem& item = items[index];
        fn(item, worker);
        touch(item, false);
        uint64_t n_bytes = 0;
        for (const JobInput& in : inputs_of(item)) n_bytes += item.n_elems * item_n_bytes(in.dtype);
        read_.fetch_add(n_bytes);
        done_.fetch_add(progress_of ? progress_of(item) : n_bytes);
      },
      clipped, done_, total_);
}

void ChunkPool::finish() const {
  if (progress_) progress_(total_, total_);
}

uint64_t budget_chunk_elems(uint64_t memory_budget, uint64_t per_elem_bytes, uint64_t workers,
                            uint64_t granule, uint64_t min_elems, uint64_t max_elems) {
  uint64_t chunk = memory_budget / (std::max<uint64_t>(1, workers) *
                                    std::max<uint64_t>(1, per_elem_bytes));
  return std::clamp(chunk / granule * granule, min_elems, max_elems);
}

SinkSpan::SinkSpan(const Sink& sink, uint64_t offset, uint64_t n_bytes,
                   std::vector<uint8_t>* staging)
    : sink_(sink), offset_(offset), n_bytes_(n_bytes) {
  if (sink.writer) {
    if (staging->size() < n_bytes) staging->resize(n_bytes);
    out_ = staging->data();
  } else {
    out_ = sink.base + offset;
  }
}

void SinkSpan::commit() const {
  if (sink_.writer) sink_.writer->write_at(offset_, out_, n_bytes_);
}

ChunkSet::ChunkSet(const Plan& plan, uint64_t chunk_elems)
    : plan_(plan), chunk_elems_(chunk_elems) {
  for (uint32_t j = 0; j < plan.jobs.size(); ++j) {
    const Job& job = plan.jobs[j];
    uint64_t step = chunk_elems;
    if (job.out_scale.present() && job.n_elems > 0 && !fp8_two_pass(job, chunk_elems)) {
      // Fresh block scales in one pass need whole block rows (at least one fits).
      uint64_t unit = job.out_scale.block_row_elems(job.n_elems);
      step = chunk_elems / unit * unit;
    }
    for (uint64_t first = 0; first < job.n_elems; first += step)
      items_.push_back({j, first, std::min(step, job.n_elems - first)});
    total_out_n_bytes_ += job.n_elems * item_n_bytes(job.out_dtype);
  }
}

const uint8_t* ChunkSet::input_ptr(const JobInput& in, uint64_t elem) const {
  return plan_.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
}

uint64_t ChunkSet::input_n_bytes(const WorkItem& item) const {
  uint64_t n = 0;
  for (const JobInput& in : plan_.jobs[item.job].inputs) n += item.n_elems * item_n_bytes(in.dtype);
  return n;
}

void touch_input(const Plan& plan, const JobInput& in, uint64_t first_elem, uint64_t n_elems,
                 bool prefetch) {
  const Source& src = plan.sources[in.source];
  if (!src.file) return;
  uint64_t size = item_n_bytes(in.dtype);
  if (prefetch) src.file->prefetch(in.offset + first_elem * size, n_elems * size);
  else src.file->release(in.offset + first_elem * size, n_elems * size);
}

void ChunkSet::prefetch(const WorkItem& item) const {
  for (const JobInput& in : plan_.jobs[item.job].inputs)
    touch_input(plan_, in, item.first_elem, item.n_elems, true);
}

void ChunkSet::release(const WorkItem& item) const {
  for (const JobInput& in : plan_.jobs[item.job].inputs)
    touch_input(plan_, in, item.first_elem, item.n_elems, false);
}

const uint8_t* ChunkSet::check_identical(const WorkItem& item) const {
  const Job& job = plan_.jobs[item.job];
  uint64_t size = item_n_bytes(job.out_dtype);
  uint64_t n_bytes = item.n_elems * size;
  const uint8_t* first = input_ptr(job.inputs[0], item.first_elem);
  for (size_t k = 1; k < job.inputs.size(); ++k) {
    const uint8_t* other = input_ptr(job.inputs[k], item.first_elem);
    if (std::memcmp(first, other, n_bytes) == 0) continue;
    uint64_t byte = 0;
    while (first[byte] == other[byte]) ++byte;
    raise(ErrorKind::kMismatch,
          format("tensor '%s' (%s) differs between %s and %s at element %llu; with int "
                 "policy 'error' non-float tensors are only passed through when identical "
                 "(int policy first or max merges them)",
                 job.name.c_str(), dtype_name(job.out_dtype),
                 plan_.sources[job.inputs[0].source].label.c_str(),
                 plan_.sources[job.inputs[k].source].label.c_str(),
                 (unsigned long long)(item.first_elem + byte / size)));
  }
  return first;
}

namespace {

template <typename T>
void max_of(const std::vector<const uint8_t*>& inputs, uint64_t n_elems, uint8_t* out) {
  for (uint64_t i = 0; i < n_elems; ++i) {
    T best;
    std::memcpy(&best, inputs[0] + i * sizeof(T), sizeof(T));
    for (size_t k = 1; k < inputs.size(); ++k) {
      T v;
      std::memcpy(&v, inputs[k] + i * sizeof(T), sizeof(T));
      if (v > best) best = v;
    }
    std::memcpy(out + i * sizeof(T), &best, sizeof(T));
  }
}

}  // namespace

void ChunkSet::elementwise_max(const WorkItem& item, uint8_t* out) const {
  const Job& job = plan_.jobs[item.job];
  std::vector<const uint8_t*> inputs;
  for (const JobInput& in : job.inputs) inputs.push_back(input_ptr(in, item.first_elem));
  switch (job.out_dtype) {
    case DType::kBool:
    case DType::kU8: max_of<uint8_t>(inputs, item.n_elems, out); break;
    case DType::kI8: max_of<int8_t>(inputs, item.n_elems, out); break;
    case DType::kI16: max_of<int16_t>(inputs, item.n_elems, out); break;
    case DType::kU16: max_of<uint16_t>(inputs, item.n_elems, out); break;
    case DType::kI32: max_of<int32_t>(inputs, item.n_elems, out); break;
    case DType::kU32: max_of<uint32_t>(inputs, item.n_elems, out); break;
    case DType::kI64: max_of<int64_t>(inputs, item.n_elems, out); break;
    case DType::kU64: max_of<uint64_t>(inputs, item.n_elems, out); break;
    default:
      raise(ErrorKind::kValue, format("tensor '%s': no elementwise max for dtype %s",
                                      job.name.c_str(), dtype_name(job.out_dtype)));
  }
}

void ChunkSet::check_input_finite(const Job& job, const JobInput& in, const void* src, size_t n,
                                  uint64_t first_elem) const {
  size_t bad = find_nonfinite(in.dtype, src, n);
  LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
              "%s: tensor '%s': non-finite value (NaN or Inf) at element %llu",
              plan_.sources[in.source].label.c_str(), job.name.c_str(),
              (unsigned long long)(first_elem + bad));
}

void ChunkSet::check_output_finite(const Job& job, const void* dst, size_t n,
                                   uint64_t first_elem) const {
  check_finite_output(plan_.sinks[job.sink], job.name, job.out_dtype, dst, n, first_elem);
}

void check_finite_output(const Sink& sink, const std::string& tensor, DType dtype,
                         const void* dst, size_t n, uint64_t first_elem) {
  size_t bad = find_nonfinite(dtype, dst, n);
  LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
              "%s: tensor '%s': merged value at element %llu is not finite (overflow in %s)",
              sink.label.c_str(), tensor.c_str(), (unsigned long long)(first_elem + bad),
              dtype_name(dtype));
}

void ChunkSet::guard_inputs(const Job& job, const std::function<void()>& body) const {
  guard_reads(plan_, job.name, body);
}

void guard_reads(const Plan& plan, const std::string& tensor, const std::function<void()>& body) {
  const void* fault = call_catching_sigbus(
      [](void* p) { (*static_cast<const std::function<void()>*>(p))(); },
      const_cast<std::function<void()>*>(&body));
  if (!fault) return;
  auto addr = static_cast<const uint8_t*>(fault);
  for (const Source& src : plan.sources) {
    if (src.base && addr >= src.base && addr < src.base + src.n_bytes)
      raise(ErrorKind::kIO,
            format("%s: tensor '%s': input changed while being read (bus error at byte %llu "
                   "of %llu): was the file truncated or rewritten during the merge?",
                   src.label.c_str(), tensor.c_str(), (unsigned long long)(addr - src.base),
                   (unsigned long long)src.n_bytes),
            EIO);
  }
  raise(ErrorKind::kIO,
        format("tensor '%s': bus error while reading the inputs (was a file truncated?)",
               tensor.c_str()),
        EIO);
}

const uint8_t* input_ptr(const Plan& plan, const JobInput& in, uint64_t elem) {
  return plan.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
}

void check_finite_input(const Plan& plan, const std::string& tensor, const JobInput& in,
                        uint64_t elem, size_t n) {
  size_t bad = n;
  guard_reads(plan, tensor, [&] { bad = find_nonfinite(in.dtype, input_ptr(plan, in, elem), n); });
  LADLE_CHECK(bad == n, ErrorKind::kNonFinite,
              "%s: tensor '%s': non-finite value (NaN or Inf) at element %llu",
              plan.sources[in.source].label.c_str(), tensor.c_str(),
              (unsigned long long)(elem + bad));
}

RunStats ChunkPool::stats(uint64_t chunk_elems, int threads, const char* kernel,
                          std::chrono::steady_clock::time_point t0) const {
  RunStats s;
  s.bytes_read = bytes_read();
  s.chunk_elems = chunk_elems;
  s.threads = threads;
  s.kernel = kernel;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

int resolve_threads(int threads) {
  LADLE_CHECK(threads >= 0 && threads <= kMaxThreads, ErrorKind::kValue,
              "threads must be from 0 (all cores) to %d, got %d", kMaxThreads, threads);
  if (threads > 0) return threads;
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u,
                                     static_cast<unsigned>(kMaxThreads)));
}

void run_workers(size_t n_items, int n_workers, const std::function<void(int)>& setup,
                 const std::function<void(int, size_t)>& process, const ProgressFn& progress,
                 const std::atomic<uint64_t>& bytes_done, uint64_t total_bytes) {
  std::atomic<size_t> next{0};
  std::atomic<bool> cancelled{false};
  std::mutex mu;
  std::condition_variable done_cv;
  std::exception_ptr first_error;
  int finished = 0;
  auto record_error = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> guard(mu);
    if (!first_error) first_error = e;
    cancelled.store(true);
  };
  install_sigbus_handler();
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(std::max(0, n_workers)));
  for (int w = 0; w < n_workers; ++w) {
    auto worker = [&, w] {
      try {
        if (setup) setup(w);
        while (!cancelled.load()) {
          size_t index = next.fetch_add(1);
          if (index >= n_items) break;
          process(w, index);
        }
      } catch (...) {
        record_error(std::current_exception());
      }
      std::lock_guard<std::mutex> guard(mu);
      ++finished;
      done_cv.notify_all();
    };
    try {
      threads.emplace_back(worker);
    } catch (const std::system_error& e) {
      // The OS refused another thread: stop the ones started (never leave a
      // joinable std::thread behind, which would abort) and report it.
      record_error(std::make_exception_ptr(
          Error(ErrorKind::kIO, format("cannot start worker thread %d of %d: %s (use fewer "
                                       "threads)", w + 1, n_workers, e.what()))));
      n_workers = w;
      break;
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  while (finished < n_workers) {
    done_cv.wait_for(lock, std::chrono::milliseconds(100));
    if (!progress) continue;
    lock.unlock();
    bool keep_going = true;
    try {
      keep_going = progress(bytes_done.load(), total_bytes);
    } catch (...) {
      record_error(std::current_exception());
    }
    if (!keep_going)
      record_error(std::make_exception_ptr(Error(ErrorKind::kCancelled, "merge cancelled")));
    lock.lock();
  }
  lock.unlock();
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
  if (progress) progress(bytes_done.load(), total_bytes);
}

}  // namespace ladle
