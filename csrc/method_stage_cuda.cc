// The CUDA method runners' shared staging, sizing and progress (method_stage_cuda.h).
#include "method_stage_cuda.h"

#include <algorithm>
#include <cstring>

#include "chunk_runner.h"
#include "common.h"
#include "kernels_cuda.h"

namespace ladle {
namespace cuda {
namespace {

constexpr uint64_t kTile = kMethodTileElems;
constexpr uint64_t kMinChunkElems = 16 * 1024;
constexpr uint64_t kMaxChunkElems = 16ull << 20;

}  // namespace

void check_model_count(const std::string& tensor, size_t n_models) {
  LADLE_CHECK(n_models <= kMaxTaskModels, ErrorKind::kValue,
              "tensor '%s': %zu models; the CUDA backend merges at most %u per tensor "
              "(use device='cpu')", tensor.c_str(), n_models, kMaxTaskModels);
}

uint64_t read_n_bytes(const std::vector<JobInput>& inputs, uint64_t n_elems) {
  uint64_t n = 0;
  for (const JobInput& in : inputs) n += n_elems * item_n_bytes(in.dtype);
  return n;
}

uint64_t chunk_elems_for(uint64_t per_elem_bytes, uint64_t state_bytes, const Options& options) {
  uint64_t chunk = options.chunk_elems;
  if (chunk == 0) {
    uint64_t budget = options.memory_budget - std::min(state_bytes, options.memory_budget / 2);
    chunk = budget_chunk_elems(budget, per_elem_bytes, 2, kTile, kMinChunkElems, kMaxChunkElems);
  }
  return (chunk + kTile - 1) / kTile * kTile;
}

uint64_t staged_per_elem(const std::vector<StagedJob>& jobs) {
  uint64_t per_elem = 1;
  for (const StagedJob& job : jobs) {
    uint64_t bytes = item_n_bytes(job.out_dtype);
    for (const JobInput& in : job.inputs) bytes += item_n_bytes(in.dtype);
    per_elem = std::max(per_elem, bytes);
  }
  return per_elem;
}

StageBytes stage_bytes(const std::vector<StagedJob>& jobs, uint64_t chunk_elems) {
  StageBytes b;
  for (const StagedJob& job : jobs) {
    uint64_t n = std::min(chunk_elems, job.n_elems), in = 0;
    for (const JobInput& input : job.inputs)
      in += align_up(n * item_n_bytes(input.dtype), kTableAlign);
    b.in = std::max(b.in, in);
    b.out = std::max(b.out, n * item_n_bytes(job.out_dtype));
  }
  return b;
}

void finish_stats(RunStats* stats, uint64_t chunk_elems, const Stage& stage,
                  std::chrono::steady_clock::time_point t0) {
  stats->chunk_elems = chunk_elems;
  stats->threads = 1;
  stats->kernel = stage.name();
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Progress::add(uint64_t n_bytes) {
  done_ += n_bytes;
  if (fn_ && !fn_(std::min(done_, total_), total_))
    raise(ErrorKind::kCancelled, "merge cancelled");
}

Stage::Stage(const Options& options, uint64_t in_bytes, uint64_t out_bytes, uint64_t n_counts,
             uint64_t n_sums, uint32_t n_models, uint64_t scratch_bytes)
    : restore_(options.backend), ops_(make_ops(options.backend, options.device)) {
  try {
    ops_->bind_thread();
    stream_ = ops_->create_stream();
    host_in_ = static_cast<uint8_t*>(ops_->alloc_host(in_bytes));
    dev_in_ = static_cast<uint8_t*>(ops_->alloc_device(in_bytes));
    dev_out_ = static_cast<uint8_t*>(ops_->alloc_device(out_bytes));
    dev_models_ = static_cast<ModelDesc*>(ops_->alloc_device(n_models * sizeof(ModelDesc)));
    dev_counts_ = static_cast<unsigned long long*>(ops_->alloc_device(n_counts * 8));
    dev_prefix_ = static_cast<unsigned long long*>(ops_->alloc_device(n_counts * 8));
    dev_sums_ = static_cast<double*>(ops_->alloc_device(n_sums * 8));
    if (scratch_bytes) dev_scratch_ = ops_->alloc_device(scratch_bytes);
  } catch (...) {
    release();  // a failed allocation leaves nothing behind
    throw;
  }
}

uint64_t Stage::stage(const Plan& plan, const std::string& name,
                      const std::vector<JobInput>& inputs, uint64_t key, uint64_t first,
                      uint64_t n) {
  if (key == staged_key_ && first == staged_first_) return 0;
  ops_->sync(stream_);  // the previous chunk's copy from host_in_ has completed
  staged_key_ = ~0ull;
  offsets_.clear();
  uint64_t cursor = 0, read = 0;
  for (const JobInput& in : inputs) {
    uint64_t n_bytes = n * item_n_bytes(in.dtype);
    const uint8_t* src = plan.sources[in.source].base + in.offset + first * item_n_bytes(in.dtype);
    guard_reads(plan, name, [&] { std::memcpy(host_in_ + cursor, src, n_bytes); });
    touch_input(plan, in, first, n, false);  // the pages are in pinned memory now
    offsets_.push_back(cursor);
    cursor += align_up(n_bytes, kTableAlign);
    read += n_bytes;
  }
  ops_->copy_h2d(dev_in_, host_in_, cursor, stream_);
  staged_key_ = key;
  staged_first_ = first;
  return read;
}

void Stage::launch(MethodLaunch* L, const std::vector<ModelDesc>& models, uint64_t n_counts,
                   const Counts* prefix) {
  ops_->copy_h2d(dev_models_, models.data(), models.size() * sizeof(ModelDesc), stream_);
  L->models = dev_models_;
  L->n_models = static_cast<uint32_t>(models.size());
  L->counts = dev_counts_;
  L->sums = dev_sums_;
  L->out = dev_out_;
  if (n_counts) ops_->zero_device(dev_counts_, n_counts * 8, stream_);
  if (prefix) ops_->copy_h2d(dev_prefix_, prefix->data(), prefix->size() * 8, stream_);
  L->tie_prefix = dev_prefix_;
  ops_->launch_method(*L, stream_);
}

void Stage::write_out(const Sink& sink, const std::string& tensor, DType dtype,
                      uint64_t out_offset, uint64_t first, uint64_t n, bool check_finite,
                      RunStats* stats, const std::function<void(const uint8_t*)>& check) {
  uint64_t out_size = item_n_bytes(dtype);
  SinkSpan span(sink, out_offset + first * out_size, n * out_size, &out_staging_);
  out_to(span.out_span(), n * out_size);
  if (check_finite && check) check(span.out_span());
  else if (check_finite) check_finite_output(sink, tensor, dtype, span.out_span(), n, first);
  span.commit();
  stats->bytes_written += n * out_size;
  ++stats->n_chunks;
}

void Stage::release() noexcept {
  try {
    if (stream_) ops_->sync(stream_);
  } catch (...) {
  }
  for (void* p : {static_cast<void*>(dev_in_), static_cast<void*>(dev_out_),
                  static_cast<void*>(dev_models_), static_cast<void*>(dev_counts_),
                  static_cast<void*>(dev_prefix_), static_cast<void*>(dev_sums_), dev_scratch_})
    if (p) ops_->free_device(p);
  if (host_in_) ops_->free_host(host_in_);
  if (stream_) ops_->destroy_stream(stream_);
  dev_in_ = dev_out_ = host_in_ = nullptr;
  dev_models_ = nullptr;
  dev_counts_ = dev_prefix_ = nullptr;
  dev_sums_ = nullptr;
  dev_scratch_ = nullptr;
  stream_ = nullptr;
}

}  // namespace cuda
}  // namespace ladle
