// The plan the engine executes: plain data describing where input bytes live
// (sources), where output bytes go (sinks) and, per output tensor, which inputs
// are combined with which weights (jobs). Python builds it; C++ runs it.
#pragma once

#include <cstdint>
#include <iterator>
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

// Every kind of work a Plan holds, one list each (Plan below): weighted sums, copies,
// elementwise maxima and nearswap (Plan::jobs, by Job::op), the task-vector programs
// of TIES/DARE/breadcrumbs, Gram reductions, DELLA, SCE and dot products. Backends
// say which they run (supports(kind)); run_jobs (plan_runner.h) runs a set of kinds.
enum class JobKind : uint8_t {
  kWeightedSum, kCopy, kMax, kNearSwap, kTaskProgram, kGram, kDot, kDella, kSce
};
constexpr JobKind kAllJobKinds[] = {JobKind::kWeightedSum, JobKind::kCopy,
                                    JobKind::kMax,         JobKind::kNearSwap,
                                    JobKind::kTaskProgram, JobKind::kGram,
                                    JobKind::kDot,         JobKind::kDella,
                                    JobKind::kSce};
// "sum", "copy", "max", "nearswap", "task", "gram", "dot", "della", "sce".
const char* job_kind_name(JobKind kind);
// Raises a kValue error naming the known kinds for anything else.
JobKind parse_job_kind(const std::string& name);

// A set of job kinds: which of a plan's lists one run executes.
class KindSet {
 public:
  constexpr KindSet() = default;
  static constexpr KindSet all() { return KindSet((1u << std::size(kAllJobKinds)) - 1); }
  constexpr KindSet& add(JobKind kind) {
    bits_ |= 1u << static_cast<unsigned>(kind);
    return *this;
  }
  constexpr bool has(JobKind kind) const { return bits_ >> static_cast<unsigned>(kind) & 1u; }

 private:
  constexpr explicit KindSet(uint32_t bits) : bits_(bits) {}
  uint32_t bits_ = 0;
};

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

// ---- Task-vector programs (task arithmetic, TIES, DARE, breadcrumbs; methods.h) ----

enum class Sparsify : uint8_t {
  kNone,
  kMagnitude,  // TIES: keep the rank_hi largest |delta| (rank range [0, rank_hi))
  kRandom,     // DARE: keep with probability `density` (counter-based RNG)
  kOutliers,   // breadcrumbs: keep descending ranks [rank_lo, rank_hi)
};

enum class Consensus : uint8_t { kNone, kSum, kCount };

// What kept deltas are multiplied by after sparsification.
enum class Rescale : uint8_t {
  kNone,
  kDensity,  // kRandom only: divide by density (the DARE paper)
  kL1,       // match the L1 norm of the unsparsified delta (mergekit's `rescale`):
             // scale = |delta|_1 / |kept|_1 unless either is below 1e-7
};

struct TaskModel {
  JobInput input;          // input.weight is the model's weight w_k (fp32)
  float density = 1.0f;    // kRandom: keep probability
  uint64_t rank_lo = 0;    // kMagnitude/kOutliers: keep elements whose rank by
  uint64_t rank_hi = 0;    // descending |delta| (ties by index) is in [lo, hi)
};

// What every job of a method over deltas from a base names first: its output tensor
// (where its bytes go, in which dtype) and the base model's input.
struct BaseJobHead {
  std::string name;
  uint64_t n_elems = 0;
  uint32_t sink = 0;
  uint64_t out_offset = 0;
  DType out_dtype = DType::kF32;
  JobInput base;
};

struct TaskJob : BaseJobHead {
  std::vector<TaskModel> models;
  Sparsify sparsify = Sparsify::kNone;
  Consensus consensus = Consensus::kNone;
  bool normalize = false;   // divide the mixed delta by the (masked) weight sum
  Rescale rescale = Rescale::kNone;
  float lambda = 1.0f;      // scales the mixed delta; 1 skips the multiplication
  uint64_t seed = 0;        // kRandom
  uint64_t tensor_key = 0;  // kRandom: tensor_key(name)
};

// Gram matrix of m vectors: the inputs, or (base >= 0) every input but the base
// minus the base. Weights of the inputs are ignored.
struct GramJob {
  std::string name;
  uint64_t n_elems = 0;
  std::vector<JobInput> inputs;
  int32_t base = -1;
};

// ---- DELLA (method_della.h) ----

enum class DellaRescale : uint8_t {
  kNone,
  kL1,           // mergekit: kept deltas times |delta|_1 / |kept|_1 (whole tensor, fp64 sums)
  kProbability,  // the paper: each kept element divided by its own keep probability
};

struct DellaModel {
  JobInput input;         // input.weight is the model's weight w_k (fp32)
  float density = 1.0f;   // >= 1 keeps everything, <= 0 drops everything
  float epsilon = 0.0f;   // keep probabilities span [density - eps, density + eps]
  float floor = 1.0f;     // fp32(density - epsilon) (rounded once from fp64)
};

struct DellaJob {
  std::string name;
  uint64_t n_elems = 0;
  uint64_t group_len = 1;     // elements per rank group (shape[1], or n for 0-D/1-D)
  uint64_t group_stride = 1;  // distance between a group's elements (prod(shape[2:]))
  uint32_t sink = 0;
  uint64_t out_offset = 0;
  DType out_dtype = DType::kF32;
  JobInput base;
  std::vector<DellaModel> models;
  bool elect_sign = false;  // `della`: TIES sign election (sum); `della_linear`: none
  bool normalize = false;   // divide by the (agreeing) weight sum
  DellaRescale rescale = DellaRescale::kNone;
  float lambda = 1.0f;
  uint64_t seed = 0;
  uint64_t tensor_key = 0;  // tensor_key(name): DARE's RNG stream (methods.h, dare_u24)
};

// ---- SCE (method_sce.h) ----

struct SceJob : BaseJobHead {
  std::vector<JobInput> models;
  double select_topk = 1.0;  // >= 1 selects every element, <= 0 none
};

// ---- Dot products (reduce.h): <lhs, x_k> per input, fp64 ----

struct DotJob {
  std::string name;     // tensor name, for messages
  uint64_t n_elems = 0;
  JobInput lhs;         // g (its weight is ignored)
  std::vector<JobInput> inputs;  // x_1..x_N (weights ignored)
};

// The one container of a run: sources, sinks and the jobs of every kind, one list
// per kind (the four engine kinds share `jobs`, told apart by Job::op).
struct Plan {
  std::vector<Source> sources;
  std::vector<Sink> sinks;
  std::vector<Job> jobs;       // sum, copy, max, nearswap
  std::vector<TaskJob> tasks;  // task
  std::vector<GramJob> grams;  // gram
  std::vector<DellaJob> dellas;
  std::vector<SceJob> sces;
  std::vector<DotJob> dots;
};

// Whether jobs of `kind` live in Plan::jobs and run on the streaming engine.
inline bool is_engine_kind(JobKind kind) {
  return kind == JobKind::kWeightedSum || kind == JobKind::kCopy || kind == JobKind::kMax ||
         kind == JobKind::kNearSwap;
}

// The kind of an engine job (its op).
inline JobKind job_kind(const Job& job) {
  switch (job.op) {
    case JobOp::kWeightedSum: return JobKind::kWeightedSum;
    case JobOp::kCopyIdentical: return JobKind::kCopy;
    case JobOp::kMax: return JobKind::kMax;
    case JobOp::kNearSwap: return JobKind::kNearSwap;
  }
  return JobKind::kWeightedSum;
}

// How many jobs of `kind` the plan holds.
size_t count_jobs(const Plan& plan, JobKind kind);

// Drops the jobs of every kind in `kinds` (sources and sinks stay).
void clear_jobs(Plan* plan, KindSet kinds);

// Name of the PyCapsule through which ladle._core hands a Plan to ladle._cuda
// (both modules come from the same build, so the struct layouts agree).
constexpr const char kPlanCapsuleName[] = "ladle.Plan.v1";

// Validates that every engine job's (Plan::jobs) byte ranges lie inside its sources
// and sink and that dtypes suit the op; raises ladle::Error naming the job otherwise.
// validate_jobs (plan_runner.h) checks the lists of every kind.
void validate_plan(const Plan& plan);

}  // namespace ladle
