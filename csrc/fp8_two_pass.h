// --dtype fp8 for jobs whose block rows do not fit a chunk (compressed-tensors'
// per-tensor scale is one R x C block; a per-channel row longer than a chunk): the
// whole block row is never buffered. Pass 1 sums the job's chunks and keeps only
// each block's amax (folded with an atomic max: exact in any order, so the scales do
// not depend on threads or chunk size); then the scales are computed and written, and
// pass 2 sums the chunks again and quantizes them with the now-known scales. The
// merged values are computed twice; memory is a chunk's, as for any other job.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "chunk_runner.h"
#include "host_sum.h"
#include "kernels.h"

namespace ladle {

class Fp8TwoPass {
 public:
  // The two-pass jobs of `chunks`' plan (fp8_two_pass in chunk_runner.h).
  explicit Fp8TwoPass(const ChunkSet& chunks);

  bool has(uint32_t job) const { return !amax_[job].empty(); }
  // The chunks of the two-pass jobs: pass 1 runs them all before any of pass 2.
  const std::vector<WorkItem>& amax_items() const { return items_; }
  size_t n_jobs() const { return n_jobs_; }

  // Pass 1 over one chunk: folds its blocks' amax into the job's (thread-safe);
  // a merged NaN or Inf is an error.
  void fold_amax(const KernelSet& kernels, const WorkItem& item, bool check_finite,
                 HostSumScratch* scratch);
  // Between the passes: every two-pass job's scales from their amax, written to
  // the scale tensors (on the calling thread; they are small).
  void write_scales();
  // Pass 2 over one chunk: out = f8_e4m3(x / s) with each element's block scale.
  void quantize(const KernelSet& kernels, const WorkItem& item, bool check_finite,
                uint8_t* out, HostSumScratch* scratch) const;

 private:
  const ChunkSet& chunks_;
  std::vector<WorkItem> items_;
  size_t n_jobs_ = 0;
  // Per job (empty for one-pass jobs): the blocks' amax as fp32 bits (non-negative
  // floats order like their bits), then their scales.
  std::vector<std::vector<std::atomic<uint32_t>>> amax_;
  std::vector<std::vector<float>> scales_;
};

}  // namespace ladle
