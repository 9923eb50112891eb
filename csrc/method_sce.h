// SCE (Wan et al. 2024, FuseChat; mergekit's `sce`): Select the elements whose task
// vectors vary most across the models (top `select_topk` by variance, one mask for all
// models), Calculate per-model weights from the selected deltas' mean square, Erase the
// deltas whose sign disagrees with the elected one, then the weighted mean of the rest.
// docs/methods.md gives the order of fp32/fp64 operations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {

constexpr uint32_t kSceHiBins = 1u << 15;  // variance rank bits >> 16 (the sign bit is clear)
constexpr uint32_t kSceLoBins = 1u << 16;  // the low 16 bits inside one high bin

// Whether the job selects by variance (0 < select_topk < 1; >= 1 keeps all, <= 0 none).
inline bool sce_selects(const SceJob& job) {
  return job.select_topk > 0.0 && job.select_topk < 1.0;
}

// The elements one SCE tensor keeps: the top K variance rank bits (sce_rank_bits),
// equal ones by lowest index. A selecting job searches the threshold with the runner's
// passes over the tensor (the CPU's and the GPU's): a histogram of the high 16 bits
// and the count of nonzero variances, then the low 16 bits inside the chosen bin, then
// (need_ties) the elements equal to the threshold per 2048-element tile.
struct SceSelection {
  bool all = true, none = false;
  uint32_t hi_bin = 0;
  uint32_t threshold = 0;
  uint64_t ties_keep = 0;  // elements equal to the threshold that are kept
  bool need_ties = false;  // some, not all, of them: their count per tile is needed
  std::vector<uint64_t> tie_prefix;  // per tile: elements equal to the threshold before it

  SceSelection() = default;
  explicit SceSelection(const SceJob& job)
      : all(job.select_topk >= 1.0), none(job.select_topk <= 0.0) {}
  // Pass 1's result (kSceHiBins counts): K = int(fp32(nonzero) * fp32(select_topk))
  // (mergekit's float32 product); false, selecting none, when K is 0.
  bool pick_hi_bin(const std::vector<uint64_t>& hist, uint64_t nonzero, double select_topk);
  // Pass 2's result (kSceLoBins counts inside hi_bin): the threshold, and whether
  // pass 3 must count ties; tie_prefix is sized for n_tiles.
  void pick_threshold(const std::vector<uint64_t>& hist, uint64_t n_tiles);
  // Turns pass 3's per-tile counts in tie_prefix into exclusive prefix sums.
  void finish_ties();

 private:
  uint64_t k_ = 0;      // elements kept
  uint64_t above_ = 0;  // elements in high bins above hi_bin
};

// The per-model weights from the fp64 sums of squares of the kept deltas per tile
// (sums[k * n_tiles + t]): m_k = (sum over tiles in order) / n, S = sum of m_k,
// w_k = fp32(m_k / S), or fp32(1/N) for every model when |S| < 1e-6.
std::vector<float> sce_model_weights(const std::vector<double>& sums, size_t n_models,
                                     uint64_t n_tiles, uint64_t n_elems);

// Checks an SCE job against its plan; run_sce_jobs and validate_jobs call it.
void validate_sce_job(const Plan& plan, const SceJob& job);

RunStats run_sce_jobs(const Plan& plan, const std::vector<SceJob>& jobs,
                      const EngineOptions& options, const ProgressFn& progress);

}  // namespace ladle
