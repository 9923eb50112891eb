// What the CUDA backend's method runners share (methods_cuda.cc: task programs and Gram
// reductions; methods_sce_cuda.cc: SCE): the device buffers of a run (Stage: a chunk's
// inputs staged once, in pinned memory and on the device, for every pass over it; the
// pass's model table; statistics), the chunk length from the memory budget and the
// progress count over every pass.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "device_ops.h"
#include "engine_cuda.h"
#include "method_kernels.h"
#include "method_kernels_cuda.h"

namespace ladle {
namespace cuda {

using Counts = std::vector<unsigned long long>;

// Method tiles (kMethodTileElems) of a run of n_elems.
inline uint64_t tiles_of(uint64_t n_elems) {
  return (n_elems + kMethodTileElems - 1) / kMethodTileElems;
}

// Refuses a tensor of more models than the kernels' per-thread arrays hold
// (kMaxTaskModels), naming it.
void check_model_count(const std::string& tensor, size_t n_models);

// Bytes of n_elems elements of every input.
uint64_t read_n_bytes(const std::vector<JobInput>& inputs, uint64_t n_elems);

// Chunk length: whole tiles, derived from the budget as the CPU runners do (pinned and
// device copies of one chunk's inputs and output, after the statistics' share).
uint64_t chunk_elems_for(uint64_t per_elem_bytes, uint64_t state_bytes, const Options& options);

// One job of a run as its buffers see it: its inputs (the base first) and its output.
struct StagedJob {
  std::vector<JobInput> inputs;
  DType out_dtype = DType::kF32;
  uint64_t n_elems = 0;
};

// The StagedJobs of method jobs (with n_elems, out_dtype), inputs_of(job) their inputs.
template <class MethodJob, class InputsOf>
std::vector<StagedJob> staged_jobs(const std::vector<MethodJob>& jobs, InputsOf inputs_of) {
  std::vector<StagedJob> staged;
  for (const MethodJob& job : jobs) staged.push_back({inputs_of(job), job.out_dtype, job.n_elems});
  return staged;
}

// Bytes per element of the widest job: every input and the output (the budget's unit).
uint64_t staged_per_elem(const std::vector<StagedJob>& jobs);

// Bytes the Stage holds for the largest chunk of any job: its inputs, each aligned as
// Stage::stage lays them out, and its output.
struct StageBytes {
  uint64_t in = 0;
  uint64_t out = 1;
};
StageBytes stage_bytes(const std::vector<StagedJob>& jobs, uint64_t chunk_elems);

class Stage;
// The statistics every method run ends with: one stream, its chunk length, the
// device's name and the time since t0.
void finish_stats(RunStats* stats, uint64_t chunk_elems, const Stage& stage,
                  std::chrono::steady_clock::time_point t0);

// Counts progress over every pass of a run; a false from the callback cancels.
class Progress {
 public:
  Progress(const ProgressFn& fn, uint64_t total) : fn_(fn), total_(total) {}
  void add(uint64_t n_bytes);

 private:
  const ProgressFn& fn_;
  uint64_t total_;
  uint64_t done_ = 0;
};

// The device buffers of a run (pinned staging, device copies, statistics), sized once
// for the largest job so a failing allocation happens before anything is written.
class Stage {
 public:
  Stage(const Options& options, uint64_t in_bytes, uint64_t out_bytes, uint64_t n_counts,
        uint64_t n_sums, uint32_t n_models, uint64_t scratch_bytes = 0);
  ~Stage() { release(); }
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

  // Copies elements [first, first + n) of every input to the device, unless that very
  // chunk (`key`) is staged already; returns the bytes read (0 when it was).
  uint64_t stage(const Plan& plan, const std::string& name, const std::vector<JobInput>& inputs,
                 uint64_t key, uint64_t first, uint64_t n);
  const void* device_input(size_t i) const { return dev_in_ + offsets_[i]; }
  const uint8_t* host_input(size_t i) const { return host_in_ + offsets_[i]; }
  // Device memory for a pass's per-element results (DELLA's keep probabilities).
  void* device_scratch() const { return dev_scratch_; }

  // Launches one pass with `models` as its model table; `counts` (when not null) is
  // zeroed on the device first and `prefix` uploaded.
  void launch(MethodLaunch* L, const std::vector<ModelDesc>& models, uint64_t n_counts,
              const Counts* prefix);
  void counts_to(Counts* dst, uint64_t n) {
    dst->resize(n);
    ops_->copy_d2h(dst->data(), dev_counts_, n * 8, stream_);
    ops_->sync(stream_);
  }
  void sums_to(std::vector<double>* dst, uint64_t n) {
    dst->resize(n);
    ops_->copy_d2h(dst->data(), dev_sums_, n * 8, stream_);
    ops_->sync(stream_);
  }
  void out_to(uint8_t* dst, uint64_t n_bytes) {
    ops_->copy_d2h(dst, dev_out_, n_bytes, stream_);
    ops_->sync(stream_);
  }
  // Writes the output of the last launch, elements [first, first + n) of a tensor at
  // out_offset of `sink`, and counts it in `stats`. When check_finite, the output is
  // checked before it is committed: by `check` (given the chunk's output bytes) when
  // set, else as a whole.
  void write_out(const Sink& sink, const std::string& tensor, DType dtype, uint64_t out_offset,
                 uint64_t first, uint64_t n, bool check_finite, RunStats* stats,
                 const std::function<void(const uint8_t*)>& check = nullptr);
  const char* name() const { return ops_->name(); }

 private:
  // Waits for the stream (a device error here is already being reported, or is
  // reported by the next sync of a later run) and frees everything allocated.
  void release() noexcept;

  RestoreCurrentDevice restore_;  // destroyed last: after everything is freed
  std::unique_ptr<DeviceOps> ops_;
  void* stream_ = nullptr;
  uint8_t* host_in_ = nullptr;
  uint8_t* dev_in_ = nullptr;
  uint8_t* dev_out_ = nullptr;
  ModelDesc* dev_models_ = nullptr;
  unsigned long long* dev_counts_ = nullptr;
  unsigned long long* dev_prefix_ = nullptr;
  double* dev_sums_ = nullptr;
  void* dev_scratch_ = nullptr;
  std::vector<uint64_t> offsets_;
  std::vector<uint8_t> out_staging_;  // for sinks that take no direct writes
  uint64_t staged_key_ = ~0ull;
  uint64_t staged_first_ = 0;
};

// What sizes a run: the most models of any job, and the bytes all its passes read
// (each job's inputs times passes_of(job)).
struct RunSize {
  uint32_t max_models = 1;
  uint64_t total_bytes = 0;
};
template <class MethodJob, class InputsOf, class PassesOf>
RunSize run_size(const std::vector<MethodJob>& jobs, InputsOf inputs_of, PassesOf passes_of) {
  RunSize size;
  for (const MethodJob& job : jobs) {
    size.max_models = std::max<uint32_t>(size.max_models, static_cast<uint32_t>(job.models.size()));
    size.total_bytes += read_n_bytes(inputs_of(job), job.n_elems) * passes_of(job);
  }
  return size;
}

// What every method runner is made of: its plan, jobs and options, the chunk length and
// the Stage of the run; run_jobs calls Derived::run_job(j, bar, stats) for each job
// with elements, then hands back the run's statistics and frees the Stage.
template <class Derived, class MethodJob>
class MethodRunner {
 public:
  MethodRunner(const Plan& plan, const std::vector<MethodJob>& jobs, const Options& options)
      : plan_(plan), jobs_(jobs), options_(options) {}

 protected:
  RunStats run_jobs(const ProgressFn& progress, uint64_t total_bytes,
                    std::chrono::steady_clock::time_point t0) {
    Progress bar(progress, total_bytes);
    RunStats stats;
    for (size_t j = 0; j < jobs_.size(); ++j)
      if (jobs_[j].n_elems > 0) static_cast<Derived*>(this)->run_job(j, &bar, &stats);
    finish_stats(&stats, chunk_elems_, *stage_, t0);
    stage_.reset();
    return stats;
  }

  const Plan& plan_;
  const std::vector<MethodJob>& jobs_;
  const Options& options_;
  uint64_t chunk_elems_ = 0;
  std::unique_ptr<Stage> stage_;
};

// Calls fn(first, n, chunk_tiles) for every chunk of a job (`key` for the Stage) of
// n_elems elements with its `inputs` staged, counting the bytes read and the progress.
template <class Fn>
void for_each_chunk(Stage* stage, const Plan& plan, const std::string& tensor,
                    const std::vector<JobInput>& inputs, uint64_t key, uint64_t n_elems,
                    uint64_t chunk_elems, Progress* bar, RunStats* stats, Fn&& fn) {
  for (uint64_t first = 0; first < n_elems; first += chunk_elems) {
    uint64_t n = std::min(chunk_elems, n_elems - first);
    stats->bytes_read += stage->stage(plan, tensor, inputs, key, first, n);
    fn(first, n, tiles_of(n));
    bar->add(read_n_bytes(inputs, n));
  }
}

}  // namespace cuda
}  // namespace ladle
