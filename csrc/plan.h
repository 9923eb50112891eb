// The plan the engine executes: plain data describing where input bytes live
// (sources), where output bytes go (sinks) and, per output tensor, which inputs
// are combined with which weights (jobs). Python builds it; C++ runs it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "mapped_file.h"
#include "shard_writer.h"

namespace ladle {

// Bytes to read: a memory-mapped file or caller-owned memory (a live tensor).
struct Source {
  std::string label;               // file path or a caller-chosen name
  const uint8_t* base = nullptr;
  uint64_t n_bytes = 0;
  std::shared_ptr<MappedFile> file;  // null for memory sources
};

// Where results go: a shard file being written, or caller-owned memory.
struct Sink {
  std::string label;
  uint8_t* base = nullptr;  // memory sinks only
  uint64_t n_bytes = 0;
  std::shared_ptr<ShardWriter> writer;  // null for memory sinks
};

// Block scales of a quantized input (DeepSeek-V3 FP8: W [R, C] with W_scale_inv
// [ceil(R/block_rows), ceil(C/block_cols)], row-major; F32, or BF16/F16 as some
// compressed-tensors checkpoints store them). A weighted sum reads element (r, c) as
// v = fp32(fp32(x) * fp32(scale[r / block_rows][c / block_cols])) (the scale converted
// exactly), then uses v like any fp32 input (w * v); scales are never weighted.
struct BlockScale {
  uint32_t source = 0;
  uint64_t offset = 0;      // byte offset of scale[0][0] in the source
  uint64_t block_rows = 0;  // 0: the input is not block-scaled
  uint64_t block_cols = 0;
  uint64_t n_cols = 0;      // C, the weight's row length
  DType dtype = DType::kF32;  // F32, BF16 or F16
  bool present() const { return block_rows != 0; }
};

// Fresh block scales of an F8_E4M3 output (the input's layout again): the merged
// fp32 values of block (i, j) are written as q = f8_e4m3(x / s) with the scale
// s = amax|x| / 448 of that block (1 for a block whose s is 0: an all-zero block),
// rounded to `dtype` before use (block_scale_of in fp8_requant.h), stored row-major
// at `offset` of `sink` as [ceil(R/block_rows), ceil(C/block_cols)] of `dtype`.
struct OutScale {
  uint32_t sink = 0;
  uint64_t offset = 0;
  uint64_t block_rows = 0;  // 0: the output is not block-scaled
  uint64_t block_cols = 0;
  uint64_t n_cols = 0;      // C, the weight's row length
  DType dtype = DType::kF32;  // F32, BF16 or F16
  bool present() const { return block_rows != 0; }
  // Elements of one block row (block_rows x C, fewer for a tensor of fewer rows).
  uint64_t block_row_elems(uint64_t n_elems) const {
    uint64_t n_rows = n_elems / n_cols;
    return (block_rows < n_rows ? block_rows : n_rows) * n_cols;
  }
};

struct JobInput {
  uint32_t source = 0;
  uint64_t offset = 0;  // byte offset of the tensor's first element in the source
  DType dtype = DType::kF32;
  float weight = 1.0f;  // already rounded to fp32 (the arithmetic contract)
  double weight_f64 = 1.0;  // the same weight rounded to fp64 once, for fp64 jobs
  BlockScale scale{};  // weighted sums only
};

// A job input with its weight rounded to fp32 once (and kept in fp64 for fp64 jobs).
inline JobInput job_input(uint32_t source, uint64_t offset, DType dtype, double weight) {
  return {source, offset, dtype, static_cast<float>(weight), weight, {}};
}

enum class JobOp : uint8_t {
  // out = round(post_scale * (w1*x1 + w2*x2 + ...)) with zero weights skipped.
  kWeightedSum,
  // out = x1, after checking every other input holds identical bytes.
  kCopyIdentical,
  // out = elementwise max of the inputs (integer and bool dtypes: ladle's
  // --int-policy max for buffers such as BatchNorm's num_batches_tracked).
  kMax,
  // mergekit's nearswap of (base, other) with Job::threshold (docs/methods.md).
  kNearSwap,
};

// Every kind of work the engine runs: weighted sums, copies and elementwise maxima
// (Plan::jobs), the task-vector programs of TIES/DARE/breadcrumbs and the Gram
// reductions (methods.h), and dot products (reduce.h). Backends say which they run
// (supports(kind)).
enum class JobKind : uint8_t { kWeightedSum, kCopy, kMax, kNearSwap, kTaskProgram, kGram, kDot };
constexpr JobKind kAllJobKinds[] = {JobKind::kWeightedSum, JobKind::kCopy,
                                    JobKind::kMax,         JobKind::kNearSwap,
                                    JobKind::kTaskProgram, JobKind::kGram,
                                    JobKind::kDot};
// "sum", "copy", "max", "nearswap", "task", "gram", "dot".
const char* job_kind_name(JobKind kind);
// Raises a kValue error naming the known kinds for anything else.
JobKind parse_job_kind(const std::string& name);

struct Job {
  std::string name;  // tensor name, for messages
  JobOp op = JobOp::kWeightedSum;
  uint64_t n_elems = 0;
  uint32_t sink = 0;
  uint64_t out_offset = 0;  // byte offset in the sink
  DType out_dtype = DType::kF32;
  float post_scale = 1.0f;  // 1 skips the multiplication
  float threshold = 0.0f;   // kNearSwap: mergekit's t, rounded to fp32
  std::vector<JobInput> inputs;
  OutScale out_scale{};  // weighted sums into F8_E4M3 only
};

// A weighted sum with an F64 input (nonzero weight) or output runs in fp64.
inline bool job_in_f64(const Job& job) {
  if (job.op != JobOp::kWeightedSum) return false;
  if (job.out_dtype == DType::kF64) return true;
  for (const JobInput& in : job.inputs)
    if (in.dtype == DType::kF64 && in.weight_f64 != 0.0) return true;
  return false;
}

// A job with a block-scaled input or output (it runs on the host in every engine).
inline bool job_has_block_scales(const Job& job) {
  if (job.out_scale.present()) return true;
  for (const JobInput& in : job.inputs)
    if (in.scale.present()) return true;
  return false;
}

struct Plan {
  std::vector<Source> sources;
  std::vector<Sink> sinks;
  std::vector<Job> jobs;
};

// Name of the PyCapsule through which ladle._core hands a Plan to ladle._cuda
// (both modules come from the same build, so the struct layouts agree).
constexpr const char kPlanCapsuleName[] = "ladle.Plan.v1";

// Validates that every job's byte ranges lie inside its sources and sink and
// that dtypes suit the op; raises ladle::Error naming the job otherwise.
void validate_plan(const Plan& plan);

}  // namespace ladle
