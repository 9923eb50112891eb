// Host side of the CUDA backend (see engine_cuda.h): device discovery, the
// streaming engine over a Plan, and DeviceSum for GPU-resident inputs.
//
// Streaming: the output tensors are cut into chunks exactly as the CPU engine
// does. `workers` host threads each own a CUDA stream, a pinned staging buffer
// and a device buffer, and take chunks from a shared counter. Per chunk a
// worker (1) copies the chunk's descriptor table and the byte ranges of its
// inputs from the memory maps into pinned memory, (2) enqueues one H2D copy,
// one kernel launch and one D2H copy on its stream, (3) waits for its stream
// and hands the pinned output to the ShardWriter. While one worker fills or
// writes, the others' copies and kernels run, so with 3 workers H2D, compute,
// D2H and disk I/O overlap (triple buffering).
#include "engine_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "chunk_runner.h"
#include "common.h"
#include "f64_sum.h"
#include "fp8_requant.h"
#include "fp8_two_pass.h"
#include "host_sum.h"
#include "kernels.h"
#include "device_ops.h"
#include "kernels_cuda.h"

namespace ladle {
namespace cuda {
namespace {

constexpr uint64_t kMinChunkElems = 64 * 1024;
constexpr uint64_t kMaxChunkElems = 64ull << 20;

// Collects a tensor's dtypes to pick the kernel's VectorMode (no allocation:
// it is used inside guard_inputs, which may siglongjmp out).
class VectorModeOf {
 public:
  void add(DType d) {  // FP8 has no vector path: byte loads, like F64
    any_f64_ = any_f64_ || d == DType::kF64 || item_n_bytes(d) == 1;
    all_16bit_ = all_16bit_ && item_n_bytes(d) == 2;
  }
  // `aligned`: every pointer of the tensor is 16-byte aligned.
  uint32_t mode(bool aligned, DType out) const {
    if (!aligned || any_f64_ || out == DType::kF64 || item_n_bytes(out) == 1) return kScalarLoads;
    return all_16bit_ ? kVectorized16 : kVectorized;
  }

 private:
  bool any_f64_ = false;
  bool all_16bit_ = true;
};

// ---- streaming engine ----

// Whether the GPU computes the job (the others run on the host: copies, maxima, fp64
// sums, block-scaled inputs and outputs).
bool runs_on_device(const Job& job) {
  if (job.op == JobOp::kNearSwap) return true;
  return job.op == JobOp::kWeightedSum && !job_in_f64(job) && !job_has_block_scales(job);
}

// Whether the kernel reads input `in` of `job`: a weighted sum skips zero weights,
// nearswap reads both of its inputs.
bool reads_input(const Job& job, const JobInput& in) {
  return job.op == JobOp::kNearSwap || in.weight != 0.0f;
}

// Bytes of staging one chunk of `job` needs: the table, then each non-skipped
// input, every part aligned to kTableAlign.
uint64_t table_n_bytes(const Job& job) {
  return align_up(sizeof(TensorDesc) + sizeof(InputDesc) * job.inputs.size(), kTableAlign);
}

uint64_t staging_in_n_bytes(const Job& job, uint64_t n_elems) {
  uint64_t n = table_n_bytes(job);
  for (const JobInput& in : job.inputs)
    if (reads_input(job, in)) n += align_up(n_elems * item_n_bytes(in.dtype), kTableAlign);
  return n;
}

// One worker's resources: a stream plus pinned and device staging.
struct Worker {
  DeviceOps* ops = nullptr;
  void* stream = nullptr;
  uint8_t* host_in = nullptr;
  uint8_t* host_out = nullptr;
  uint8_t* dev_in = nullptr;
  uint8_t* dev_out = nullptr;
  uint64_t staged_n_bytes = 0;  // table + inputs of the current chunk
  HostSumScratch host_sum;      // block-scaled jobs, summed on the host
  RequantScratch requant;       // --dtype fp8 jobs, requantized on the host

  ~Worker() {
    if (!ops) return;
    if (stream) ops->destroy_stream(stream);
    if (host_in) ops->free_host(host_in);
    if (host_out) ops->free_host(host_out);
    if (dev_in) ops->free_device(dev_in);
    if (dev_out) ops->free_device(dev_out);
  }
};

class Runner {
 public:
  Runner(const Plan& plan, const Options& options, uint64_t chunk_elems)
      : chunks_(plan, chunk_elems), two_pass_(chunks_), options_(options) {
    for (const Job& job : plan.jobs) {
      if (job_in_f64(job) || job_has_block_scales(job)) ++host_sums_;
      uint64_t n = std::min(chunk_elems, job.n_elems);
      if (job.op == JobOp::kMax)  // computed on the host into host_out
        out_capacity_ = std::max(out_capacity_, n * item_n_bytes(job.out_dtype));
      if (job.op != JobOp::kWeightedSum && job.op != JobOp::kNearSwap) continue;
      in_capacity_ = std::max(in_capacity_, staging_in_n_bytes(job, n));
      out_capacity_ = std::max(out_capacity_, n * item_n_bytes(job.out_dtype));
    }
  }

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    RestoreCurrentDevice restore(options_.backend);
    ops_ = make_ops(options_.backend, options_.device);
    int n_workers = std::max(1, options_.workers);
    // Allocate everything up front, on this thread: a failure leaves nothing behind.
    ops_->bind_thread();
    workers_.resize(n_workers);
    if (in_capacity_ > 0) {
      for (Worker& w : workers_) {
        w.ops = ops_.get();
        w.stream = ops_->create_stream();
        w.host_in = static_cast<uint8_t*>(ops_->alloc_host(in_capacity_));
        w.host_out = static_cast<uint8_t*>(ops_->alloc_host(out_capacity_));
        w.dev_in = static_cast<uint8_t*>(ops_->alloc_device(in_capacity_));
        w.dev_out = static_cast<uint8_t*>(ops_->alloc_device(out_capacity_));
      }
    }
    const auto& items = chunks_.items();
    size_t n = static_cast<size_t>(n_workers);
    try {
      if (two_pass_.n_jobs() > 0) first_pass(n_workers, progress);
      run_workers(
          items.size(), n_workers, [this](int) { ops_->bind_thread(); },
          [&](int worker, size_t index) {
            if (index + n < items.size()) chunks_.prefetch(items[index + n]);
            process(items[index], &workers_[static_cast<size_t>(worker)]);
          },
          progress, bytes_done_, chunks_.total_out_n_bytes());
    } catch (...) {
      workers_.clear();
      throw;
    }
    workers_.clear();
    RunStats stats;
    stats.bytes_read = bytes_read_.load();
    stats.bytes_written = bytes_done_.load();
    stats.n_chunks = items.size();
    stats.chunk_elems = chunks_.chunk_elems();
    stats.threads = n_workers;
    stats.kernel = ops_->name();
    stats.host_sums = host_sums_;
    stats.fp8_two_pass = two_pass_.n_jobs();
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return stats;
  }

 private:
  void process(const WorkItem& item, Worker* worker) {
    const Job& job = chunks_.plan().jobs[item.job];
    const Sink& sink = chunks_.plan().sinks[job.sink];
    uint64_t out_size = item_n_bytes(job.out_dtype);
    uint64_t out_offset = job.out_offset + item.first_elem * out_size;
    uint64_t out_n_bytes = item.n_elems * out_size;
    const uint8_t* out = worker->host_out;
    chunks_.guard_inputs(job, [&] {
      // Pass-through tensors never touch the GPU: compared on the CPU, written from the map.
      // fp64 jobs too are computed on the host (the kernel accumulates in fp32), and
      // so are jobs with block-scaled inputs (dequantized tile by tile).
      if (job.op == JobOp::kCopyIdentical) out = chunks_.check_identical(item);
      else if (job.op == JobOp::kMax) chunks_.elementwise_max(item, worker->host_out);
      else if (job_in_f64(job))
        weighted_sum_f64(chunks_, job, item, options_.check_finite, worker->host_out);
      else if (two_pass_.has(item.job))
        two_pass_.quantize(host_kernels(), item, options_.check_finite, worker->host_out,
                           &worker->host_sum);
      else if (job.out_scale.present())
        weighted_sum_fp8_blocks(chunks_, host_kernels(), job, item, options_.check_finite,
                                worker->host_out, &worker->host_sum, &worker->requant);
      else if (job_has_block_scales(job))
        weighted_sum_f32(chunks_, select_kernels(KernelImpl::kAuto), job, item,
                         options_.check_finite, worker->host_out, &worker->host_sum);
      else stage_inputs(job, item, worker);
    });
    if (runs_on_device(job)) launch(job, item, worker);
    if (sink.writer) sink.writer->write_at(out_offset, out, out_n_bytes);
    else std::memcpy(sink.base + out_offset, out, out_n_bytes);
    chunks_.release(item);
    bytes_read_.fetch_add(chunks_.input_n_bytes(item));
    bytes_done_.fetch_add(out_n_bytes);
  }

  static const KernelSet& host_kernels() { return select_kernels(KernelImpl::kAuto); }

  // The first pass of the fp8 jobs whose block rows exceed a chunk (fp8_two_pass.h),
  // on the host like their second; its reads are not counted as bytes read.
  void first_pass(int n_workers, const ProgressFn& progress) {
    const auto& items = two_pass_.amax_items();
    std::atomic<uint64_t> none{0};
    run_workers(
        items.size(), n_workers, nullptr,
        [&](int worker, size_t index) {
          const WorkItem& item = items[index];
          if (index + 1 < items.size()) chunks_.prefetch(items[index + 1]);
          chunks_.guard_inputs(chunks_.plan().jobs[item.job], [&] {
            two_pass_.fold_amax(host_kernels(), item, options_.check_finite,
                                &workers_[static_cast<size_t>(worker)].host_sum);
          });
          chunks_.release(item);
        },
        progress, none, chunks_.total_out_n_bytes());
    two_pass_.write_scales();
  }

  // Copies the descriptor table and the inputs into pinned memory, at the
  // offsets they take on the device; the worker records the staged size.
  void stage_inputs(const Job& job, const WorkItem& item, Worker* w) const {
    auto* tensor = reinterpret_cast<TensorDesc*>(w->host_in);
    auto* inputs = reinterpret_cast<InputDesc*>(w->host_in + sizeof(TensorDesc));
    uint64_t cursor = table_n_bytes(job);
    VectorModeOf vector_mode;
    for (size_t k = 0; k < job.inputs.size(); ++k) {
      const JobInput& in = job.inputs[k];
      inputs[k] = {nullptr, in.weight, static_cast<uint32_t>(in.dtype)};
      if (!reads_input(job, in)) continue;  // skipped by the kernel: not even copied
      uint64_t n_bytes = item.n_elems * item_n_bytes(in.dtype);
      std::memcpy(w->host_in + cursor, chunks_.input_ptr(in, item.first_elem), n_bytes);
      if (options_.check_finite)
        chunks_.check_input_finite(job, in, w->host_in + cursor, item.n_elems, item.first_elem);
      inputs[k].ptr = w->dev_in + cursor;
      vector_mode.add(in.dtype);
      cursor += align_up(n_bytes, kTableAlign);
    }
    *tensor = TensorDesc{};
    tensor->out = w->dev_out;
    tensor->n_elems = item.n_elems;
    tensor->first_tile = 0;
    tensor->first_input = 0;
    tensor->n_inputs = static_cast<uint32_t>(job.inputs.size());
    tensor->post_scale = job.op == JobOp::kNearSwap ? job.threshold : job.post_scale;
    tensor->out_dtype = static_cast<uint32_t>(job.out_dtype);
    tensor->vectorized = vector_mode.mode(true, job.out_dtype);  // staging is aligned
    tensor->flags = job.op == JobOp::kNearSwap ? kNearSwapOp : 0;
    w->staged_n_bytes = cursor;
  }

  // One H2D copy, one kernel launch (weighted sum or nearswap), one D2H copy.
  void launch(const Job& job, const WorkItem& item, Worker* w) const {
    LaunchArgs args;
    args.tensors = reinterpret_cast<const TensorDesc*>(w->dev_in);
    args.inputs = reinterpret_cast<const InputDesc*>(w->dev_in + sizeof(TensorDesc));
    args.n_tensors = 1;
    args.n_tiles = tiles_for(item.n_elems);
    uint64_t out_n_bytes = item.n_elems * item_n_bytes(job.out_dtype);
    w->ops->copy_h2d(w->dev_in, w->host_in, w->staged_n_bytes, w->stream);
    w->ops->launch(args, w->stream);
    w->ops->copy_d2h(w->host_out, w->dev_out, out_n_bytes, w->stream);
    w->ops->sync(w->stream);
    if (options_.check_finite)
      chunks_.check_output_finite(job, w->host_out, item.n_elems, item.first_elem);
  }

  ChunkSet chunks_;
  Fp8TwoPass two_pass_;
  const Options& options_;
  uint64_t host_sums_ = 0;  // weighted sums computed on the host (fp64, FP8 scales)
  uint64_t in_capacity_ = 0;
  uint64_t out_capacity_ = 0;
  std::unique_ptr<DeviceOps> ops_;
  std::vector<Worker> workers_;
  std::atomic<uint64_t> bytes_done_{0};
  std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace

Status status() {
  Status s;
  cudaRuntimeGetVersion(&s.runtime_version);
  if (cudaDriverGetVersion(&s.driver_version) != cudaSuccess) s.driver_version = 0;
  cudaError_t err = cudaGetDeviceCount(&s.device_count);
  if (err != cudaSuccess) {
    s.device_count = 0;
    s.error = format("%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cudaGetLastError();  // clear it: later calls must not see a stale error
  } else if (s.device_count == 0) {
    s.error = "no CUDA device found";
  }
  return s;
}

DeviceProps device_props(int device) {
  cudaDeviceProp prop;
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceProps p;
  p.name = prop.name;
  p.major = prop.major;
  p.minor = prop.minor;
  p.sm_count = prop.multiProcessorCount;
  p.total_n_bytes = prop.totalGlobalMem;
  return p;
}

uint64_t choose_chunk_elems(const Plan& plan, const Options& options) {
  if (options.chunk_elems > 0) return options.chunk_elems;
  // Per element in flight per worker: its pinned input and output bytes.
  uint64_t per_elem = 1;
  for (const Job& job : plan.jobs) {
    if (job.op == JobOp::kMax) per_elem = std::max(per_elem, item_n_bytes(job.out_dtype));
    if (job.op != JobOp::kWeightedSum && job.op != JobOp::kNearSwap) continue;
    uint64_t bytes = item_n_bytes(job.out_dtype);
    if (job.out_scale.present()) bytes += sizeof(float);  // the chunk's merged fp32 values
    for (const JobInput& in : job.inputs) bytes += item_n_bytes(in.dtype);
    per_elem = std::max(per_elem, bytes);
  }
  uint64_t workers = static_cast<uint64_t>(std::max(1, options.workers));
  return budget_chunk_elems(options.memory_budget, per_elem, workers, kTileElems, kMinChunkElems,
                            kMaxChunkElems);
}

RunStats run_plan(const Plan& plan, const Options& options, const ProgressFn& progress) {
  validate_plan(plan);
  Runner runner(plan, options, choose_chunk_elems(plan, options));
  return runner.run(progress);
}

// ---- DeviceSum ----

struct DeviceSum::Impl {
  std::unique_ptr<DeviceOps> ops;
  int device = 0;
  std::vector<uint8_t> host_table;  // [TensorDesc x n][InputDesc x n*k]
  uint8_t* dev_table = nullptr;
  size_t n_live = 0;  // tensors with elements
  uint64_t n_tiles = 0;
  bool emulated = false;

  ~Impl() {
    if (!dev_table) return;
    if (emulated) {
      ops->free_device(dev_table);
      return;
    }
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    cudaDeviceSynchronize();  // a launch may still read the table
    ops->free_device(dev_table);
    cudaSetDevice(previous);
  }
};

namespace {

void check_device_pointer(const DeviceTensor& t, uint64_t address, int device, const char* what) {
  LADLE_CHECK(address != 0, ErrorKind::kValue, "tensor '%s': %s is a null pointer",
              t.name.c_str(), what);
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(address));
  if (err != cudaSuccess) {
    cudaGetLastError();
    raise(ErrorKind::kValue, format("tensor '%s': %s (0x%llx) is not CUDA memory: %s",
                                    t.name.c_str(), what, (unsigned long long)address,
                                    cudaGetErrorString(err)));
  }
  LADLE_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
              ErrorKind::kValue, "tensor '%s': %s (0x%llx) is host memory, not device memory",
              t.name.c_str(), what, (unsigned long long)address);
  LADLE_CHECK(attr.device == device, ErrorKind::kValue,
              "tensor '%s': %s is on CUDA device %d, expected device %d", t.name.c_str(), what,
              attr.device, device);
}

// Restores the calling thread's current device when it goes out of scope.
class DeviceGuard {
 public:
  DeviceGuard(int device, bool active) : active_(active) {
    if (!active_) return;
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
    else active_ = false;
  }
  ~DeviceGuard() {
    if (active_) cudaSetDevice(previous_);
  }

 private:
  bool active_;
  int previous_ = 0;
};

}  // namespace

DeviceSum::DeviceSum(int device, std::vector<DeviceTensor> tensors, Backend backend)
    : impl_(std::make_unique<Impl>()), tensors_(std::move(tensors)) {
  LADLE_CHECK(!tensors_.empty(), ErrorKind::kValue, "DeviceSum: no tensors given");
  n_inputs_ = static_cast<int>(tensors_[0].in_addresses.size());
  LADLE_CHECK(n_inputs_ > 0, ErrorKind::kValue, "tensor '%s': no inputs",
              tensors_[0].name.c_str());
  impl_->device = device;
  impl_->emulated = backend == Backend::kEmulator;
  impl_->ops = make_ops(backend, device);
  DeviceGuard guard(device, !impl_->emulated);
  std::vector<TensorDesc> descs;
  std::vector<InputDesc> inputs;
  for (const DeviceTensor& t : tensors_) {
    LADLE_CHECK(t.in_addresses.size() == static_cast<size_t>(n_inputs_) &&
                    t.in_dtypes.size() == t.in_addresses.size(),
                ErrorKind::kValue, "tensor '%s': %zu inputs (%zu dtypes), expected %d",
                t.name.c_str(), t.in_addresses.size(), t.in_dtypes.size(), n_inputs_);
    LADLE_CHECK(dtype_is_mergeable(t.out_dtype), ErrorKind::kValue,
                "tensor '%s': cannot write merged values as %s", t.name.c_str(),
                dtype_name(t.out_dtype));
    bool aligned = t.out_address % 16 == 0;
    VectorModeOf vector_mode;
    for (int k = 0; k < n_inputs_; ++k) {
      LADLE_CHECK(dtype_is_mergeable(t.in_dtypes[k]), ErrorKind::kValue,
                  "tensor '%s': input %d has dtype %s, which cannot be merged arithmetically",
                  t.name.c_str(), k, dtype_name(t.in_dtypes[k]));
      aligned = aligned && t.in_addresses[k] % 16 == 0;
      vector_mode.add(t.in_dtypes[k]);
    }
    n_elems_ += t.n_elems;
    if (t.n_elems == 0) continue;
    if (!impl_->emulated) {
      check_device_pointer(t, t.out_address, device, "output");
      for (int k = 0; k < n_inputs_; ++k)
        check_device_pointer(t, t.in_addresses[k], device, "an input");
    }
    TensorDesc d{};
    d.out = reinterpret_cast<void*>(t.out_address);
    d.n_elems = t.n_elems;
    d.first_tile = impl_->n_tiles;
    d.first_input = static_cast<uint32_t>(inputs.size());
    d.n_inputs = static_cast<uint32_t>(n_inputs_);
    d.post_scale = 1.0f;
    d.out_dtype = static_cast<uint32_t>(t.out_dtype);
    d.vectorized = vector_mode.mode(aligned, t.out_dtype);
    bool f64 = t.out_dtype == DType::kF64;
    for (int k = 0; k < n_inputs_; ++k) f64 = f64 || t.in_dtypes[k] == DType::kF64;
    // fp64 weights travel as arguments only (kMaxArgWeights of them).
    LADLE_CHECK(!f64 || n_inputs_ <= static_cast<int>(kMaxArgWeights), ErrorKind::kValue,
                "tensor '%s': float64 tensors are summed in fp64 with at most %u inputs "
                "(got %d)", t.name.c_str(), kMaxArgWeights, n_inputs_);
    d.flags = f64 ? kAccumulateF64 : 0;
    descs.push_back(d);
    for (int k = 0; k < n_inputs_; ++k)
      inputs.push_back({reinterpret_cast<const void*>(t.in_addresses[k]), 1.0f,
                        static_cast<uint32_t>(t.in_dtypes[k])});
    impl_->n_tiles += tiles_for(t.n_elems);
  }
  impl_->n_live = descs.size();
  uint64_t descs_n_bytes = descs.size() * sizeof(TensorDesc);
  impl_->host_table.resize(descs_n_bytes + inputs.size() * sizeof(InputDesc));
  if (!descs.empty()) std::memcpy(impl_->host_table.data(), descs.data(), descs_n_bytes);
  if (!inputs.empty())
    std::memcpy(impl_->host_table.data() + descs_n_bytes, inputs.data(),
                inputs.size() * sizeof(InputDesc));
  if (impl_->n_live > 0) {
    impl_->dev_table = static_cast<uint8_t*>(impl_->ops->alloc_device(impl_->host_table.size()));
    impl_->ops->copy_h2d(impl_->dev_table, impl_->host_table.data(), impl_->host_table.size(),
                         nullptr);
    impl_->ops->sync(nullptr);
  }
}

DeviceSum::~DeviceSum() = default;

void DeviceSum::run(const std::vector<double>& weights, float post_scale, uint64_t stream) {
  LADLE_CHECK(weights.size() == static_cast<size_t>(n_inputs_), ErrorKind::kValue,
              "DeviceSum.run: %zu weights given for %d inputs", weights.size(), n_inputs_);
  for (size_t k = 0; k < weights.size(); ++k)
    LADLE_CHECK(weights[k] == weights[k], ErrorKind::kValue, "DeviceSum.run: weight %zu is NaN",
                k);
  if (impl_->n_live == 0) return;
  DeviceGuard guard(impl_->device, !impl_->emulated);
  void* s = reinterpret_cast<void*>(stream);
  LaunchArgs args;
  args.tensors = reinterpret_cast<const TensorDesc*>(impl_->dev_table);
  args.inputs = reinterpret_cast<const InputDesc*>(impl_->dev_table +
                                                   impl_->n_live * sizeof(TensorDesc));
  args.n_tensors = static_cast<uint32_t>(impl_->n_live);
  args.n_tiles = impl_->n_tiles;
  if (weights.size() <= kMaxArgWeights) {
    // Weights travel as kernel arguments: no copy, fully asynchronous.
    args.n_arg_weights = static_cast<uint32_t>(weights.size());
    args.arg_post_scale = post_scale;
    for (size_t k = 0; k < weights.size(); ++k) {
      args.arg_weights[k] = static_cast<float>(weights[k]);
      args.arg_weights64[k] = weights[k];
    }
  } else {
    // Too many for the arguments: rewrite the table's weights. The copy is
    // ordered on the caller's stream after earlier launches that read the
    // table; from pageable memory it returns once the bytes are staged.
    uint8_t* table = impl_->host_table.data();
    auto* descs = reinterpret_cast<TensorDesc*>(table);
    auto* inputs = reinterpret_cast<InputDesc*>(table + impl_->n_live * sizeof(TensorDesc));
    for (size_t t = 0; t < impl_->n_live; ++t) {
      descs[t].post_scale = post_scale;
      for (int k = 0; k < n_inputs_; ++k)
        inputs[t * n_inputs_ + k].weight = static_cast<float>(weights[k]);
    }
    impl_->ops->copy_h2d(impl_->dev_table, table, impl_->host_table.size(), s);
  }
  impl_->ops->launch(args, s);
}

}  // namespace cuda
}  // namespace ladle
