#include "engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "chunk_runner.h"
#include "common.h"
#include "f64_sum.h"
#include "fp8_requant.h"
#include "fp8_two_pass.h"
#include "host_sum.h"
#include "method_kernels.h"
#include "safetensors.h"

namespace ladle {
namespace {

constexpr uint64_t kMinChunkElems = 16 * 1024;
constexpr uint64_t kMaxChunkElems = kCpuMaxChunkElems;
constexpr size_t kPrefetchDepth = 2;

// Per-thread scratch, allocated once and reused for every chunk.
struct Scratch {
  std::vector<uint8_t> out;
  HostSumScratch sum;  // also nearswap's two converted input tiles
  RequantScratch requant;  // jobs with fresh FP8 block scales
};

class Runner {
 public:
  Runner(const Plan& plan, const EngineOptions& options, int threads, uint64_t chunk_elems)
      : chunks_(plan, chunk_elems),
        two_pass_(chunks_),
        options_(options),
        kernels_(select_kernels(options.kernel)),
        scratch_(static_cast<size_t>(threads)) {}

  RunStats run(const ProgressFn& progress) {
    auto t0 = std::chrono::steady_clock::now();
    const auto& items = chunks_.items();
    const Plan& plan = chunks_.plan();
    int n_workers = static_cast<int>(scratch_.size());
    // Keep kPrefetchDepth chunks per thread in flight ahead of the cursor: cold
    // reads then overlap compute and writes (the budget accounts for them).
    // Progress counts output bytes.
    ChunkPool pool(plan, n_workers, kPrefetchDepth, progress, chunks_.total_out_n_bytes());
    auto inputs_of = [&](const WorkItem& item) -> const std::vector<JobInput>& {
      return plan.jobs[item.job].inputs;
    };
    if (two_pass_.n_jobs() > 0) {
      // fp8 scales of block rows larger than a chunk: their first pass, in a pool of
      // its own (its reads are not counted as bytes read, nor its progress as done).
      ChunkPool first(plan, n_workers, kPrefetchDepth, progress, chunks_.total_out_n_bytes());
      first.run(two_pass_.amax_items(), inputs_of, [&](const WorkItem& item, int worker) {
        chunks_.guard_inputs(plan.jobs[item.job], [&] {
          two_pass_.fold_amax(kernels_, item, options_.check_finite,
                              &scratch_[static_cast<size_t>(worker)].sum);
        });
      }, [](const WorkItem&) { return uint64_t{0}; });
      two_pass_.write_scales();
    }
    pool.run(
        items, inputs_of,
        [&](const WorkItem& item, int worker) {
          process(item, &scratch_[static_cast<size_t>(worker)]);
        },
        [&](const WorkItem& item) {
          return item.n_elems * item_n_bytes(plan.jobs[item.job].out_dtype);
        });
    RunStats stats = pool.stats(chunks_.chunk_elems(), n_workers, kernels_.name, t0);
    stats.bytes_written = pool.bytes_done();
    stats.n_chunks = items.size();
    stats.fp8_two_pass = two_pass_.n_jobs();
    return stats;
  }

 private:
  void process(const WorkItem& item, Scratch* scratch) {
    const Job& job = chunks_.plan().jobs[item.job];
    const Sink& sink = chunks_.plan().sinks[job.sink];
    uint64_t out_size = item_n_bytes(job.out_dtype);
    uint64_t out_offset = job.out_offset + item.first_elem * out_size;
    uint64_t out_n_bytes = item.n_elems * out_size;
    SinkSpan span(sink, out_offset, out_n_bytes, &scratch->out);
    uint8_t* out = span.out_span();
    chunks_.guard_inputs(job, [&] {
      if (job.op == JobOp::kCopyIdentical)
        std::memcpy(out, chunks_.check_identical(item), out_n_bytes);
      else if (job.op == JobOp::kMax)
        chunks_.elementwise_max(item, out);
      else if (job.op == JobOp::kNearSwap)
        near_swap(job, item, out, scratch->sum.acc, scratch->sum.values);
      else if (job_in_f64(job))
        weighted_sum_f64(chunks_, job, item, options_.check_finite, out);
      else if (two_pass_.has(item.job))
        two_pass_.quantize(kernels_, item, options_.check_finite, out, &scratch->sum);
      else if (job.out_scale.present())
        weighted_sum_fp8_blocks(chunks_, kernels_, job, item, options_.check_finite, out,
                                &scratch->sum, &scratch->requant);
      else
        weighted_sum_f32(chunks_, kernels_, job, item, options_.check_finite, out,
                         &scratch->sum);
    });
    span.commit();
  }

  // Both inputs converted exactly to fp32 tile by tile, then the per-element kernel.
  void near_swap(const Job& job, const WorkItem& item, uint8_t* out, float* base,
                 float* other) const {
    uint64_t out_size = item_n_bytes(job.out_dtype);
    for (uint64_t t = 0; t < item.n_elems; t += kHostTileElems) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kHostTileElems, item.n_elems - t));
      uint64_t elem = item.first_elem + t;
      float* values[2] = {base, other};
      for (size_t k = 0; k < 2; ++k) {
        const JobInput& in = job.inputs[k];
        const uint8_t* src = chunks_.input_ptr(in, elem);
        if (options_.check_finite) chunks_.check_input_finite(job, in, src, n, elem);
        kernels_.accumulate(in.dtype, src, 1.0f, values[k], n, true);
      }
      near_swap_tile(base, other, job.threshold, base, n);
      uint8_t* dst = out + t * out_size;
      kernels_.store(job.out_dtype, base, 1.0f, dst, n);
      if (options_.check_finite) chunks_.check_output_finite(job, dst, n, elem);
    }
  }

  ChunkSet chunks_;
  Fp8TwoPass two_pass_;
  const EngineOptions& options_;
  const KernelSet& kernels_;
  std::vector<Scratch> scratch_;
};

}  // namespace

const char* job_kind_name(JobKind kind) {
  switch (kind) {
    case JobKind::kWeightedSum: return "sum";
    case JobKind::kCopy: return "copy";
    case JobKind::kMax: return "max";
    case JobKind::kNearSwap: return "nearswap";
    case JobKind::kTaskProgram: return "task";
    case JobKind::kGram: return "gram";
    case JobKind::kDot: return "dot";
    case JobKind::kDella: return "della";
    case JobKind::kSce: return "sce";
  }
  return "?";
}

JobKind parse_job_kind(const std::string& name) {
  for (JobKind kind : kAllJobKinds)
    if (name == job_kind_name(kind)) return kind;
  LADLE_CHECK(false, ErrorKind::kValue, "unknown job kind '%s' (known: sum, copy, max, nearswap, task, gram, dot, della, sce)",
              name.c_str());
  return JobKind::kWeightedSum;
}

void validate_plan(const Plan& plan) {
  for (const Job& job : plan.jobs) {
    // Weighted sums and nearswap convert float inputs to fp32; the others copy bytes.
    bool sum = job.op == JobOp::kWeightedSum || job.op == JobOp::kNearSwap;
    if (job.op == JobOp::kNearSwap)
      LADLE_CHECK(job.inputs.size() == 2 && std::isfinite(job.threshold), ErrorKind::kValue,
                  "tensor '%s': nearswap needs 2 inputs and a finite t", job.name.c_str());
    validate_output(plan, job.name, job.sink, job.out_offset, job.out_dtype, job.n_elems, false);
    LADLE_CHECK(!job.inputs.empty(), ErrorKind::kValue, "tensor '%s': no inputs",
                job.name.c_str());
    for (const JobInput& in : job.inputs) {
      validate_input(plan, job.name, in, job.n_elems, sum);
      if (in.scale.present()) {
        LADLE_CHECK(job.op == JobOp::kWeightedSum && !job_in_f64(job), ErrorKind::kValue,
                    "tensor '%s': block-scaled inputs are dequantized only by fp32 weighted "
                    "sums (not by copies, maxima or F64 outputs)",
                    job.name.c_str());
        validate_block_scale(plan, job.name, in, job.n_elems);
      }
      if (sum) {
        LADLE_CHECK(in.weight == in.weight, ErrorKind::kValue, "tensor '%s': NaN weight",
                    job.name.c_str());
      } else {
        LADLE_CHECK(in.dtype == job.out_dtype, ErrorKind::kMismatch,
                    "%s: tensor '%s': dtype %s differs from %s",
                    plan.sources[in.source].label.c_str(), job.name.c_str(),
                    dtype_name(in.dtype), dtype_name(job.out_dtype));
      }
    }
    if (job.out_scale.present()) validate_out_scale(plan, job);
    if (sum)
      LADLE_CHECK(dtype_is_mergeable(job.out_dtype), ErrorKind::kValue,
                  "tensor '%s': cannot write merged values as %s", job.name.c_str(),
                  dtype_name(job.out_dtype));
    if (job.op == JobOp::kMax)
      LADLE_CHECK(dtype_is_integer(job.out_dtype), ErrorKind::kValue,
                  "tensor '%s': an elementwise max needs an integer or bool dtype, not %s",
                  job.name.c_str(), dtype_name(job.out_dtype));
    LADLE_CHECK(dtype_bits(job.out_dtype) % 8 == 0, ErrorKind::kValue,
                "tensor '%s': sub-byte dtype %s must be planned as bytes", job.name.c_str(),
                dtype_name(job.out_dtype));
  }
}

uint64_t choose_chunk_elems(const Plan& plan, const EngineOptions& options, int threads) {
  if (options.chunk_elems > 0) return options.chunk_elems;
  // Per element in flight: the output staging bytes plus the input pages of the
  // current chunk and of the kPrefetchDepth prefetched ones.
  uint64_t per_elem = 1;
  for (const Job& job : plan.jobs) {
    uint64_t bytes = item_n_bytes(job.out_dtype);
    if (job.out_scale.present()) bytes += sizeof(float);  // the chunk's merged fp32 values
    for (const JobInput& in : job.inputs) bytes += (1 + kPrefetchDepth) * item_n_bytes(in.dtype);
    per_elem = std::max(per_elem, bytes);
  }
  return budget_chunk_elems(options.memory_budget, per_elem, static_cast<uint64_t>(threads), 4096,
                            kMinChunkElems, kMaxChunkElems);
}

RunStats run_plan(const Plan& plan, const EngineOptions& options, const ProgressFn& progress) {
  validate_plan(plan);
  int threads = resolve_threads(options.threads);
  uint64_t chunk_elems = choose_chunk_elems(plan, options, threads);
  Runner runner(plan, options, threads, chunk_elems);
  return runner.run(progress);
}

}  // namespace ladle
