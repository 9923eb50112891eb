// Interface of the CUDA kernels of the merge methods (csrc/method_kernels_cuda.cu),
// free of CUDA headers so g++-compiled code can use it. One launch runs one pass of
// a task-vector job (TIES/DARE/breadcrumbs: |delta| histograms, tie counts, L1 norms,
// the per-element program), of a Gram reduction, of an SCE job (variance histograms,
// tie counts, sums of squares, the per-element program) or of a DELLA job (keep
// probabilities by rank, then the task's L1 and apply passes) over ONE staged chunk of
// one tensor.
// Every pass computes exactly what the CPU scalar reference (method_kernels_cpu.cc,
// methods_cpu.cc) computes for the same elements: the same fp32/fp64 operations in the
// same order, fixed per-tile (kMethodTileElems) fp64 chains in index order, integer
// histograms, the rank window's tie rule by index, DARE's counter-based draw.
#pragma once

#include <cstdint>

namespace ladle {
namespace cuda {

constexpr int kMethodThreads = 256;   // threads per block; one block per tile
constexpr uint32_t kLaneElems = 8;    // consecutive elements per lane (256 * 8 = one tile)
constexpr uint32_t kMaxTaskModels = 64;  // models per task job on this backend
constexpr uint32_t kLoHistBins = 1u << 16;

enum MethodPass : uint32_t {
  kPassHistHi = 0,  // ++hist[k * kHiHistBins + (|d| bits >> 16)] for selecting models
  kPassHistLo = 1,  // ++hist[(2k + s) * kLoHistBins + (|d| bits & 0xFFFF)] inside hi_bin
  kPassTies = 2,    // ++counts[(2k + s) * n_tiles + tile] for |d| bits == threshold
  kPassL1 = 3,      // sums[(2k + 0|1) * n_tiles + tile]: L1 of d before / after sparsifying
  kPassApply = 4,   // out = base + mix(weighted, sparsified, rescaled deltas)
  kPassGram = 5,    // sums[pair * n_tiles + tile] = Σ double(v_a) * double(v_b)
  // SCE (method_sce.h): one selection for every model, by the variance rank bits v of
  // the models' deltas (sce_variance_bits), in `select`.
  kPassSceHistHi = 6,   // ++counts[v >> 16]; counts[kHiHistBins] += elements with v != 0
  kPassSceHistLo = 7,   // ++counts[v & 0xFFFF] for v >> 16 == select.hi_bin
  kPassSceTies = 8,     // ++counts[tile] for v == select.threshold
  kPassSceSquares = 9,  // sums[k * n_tiles + tile] = Σ double(kept δ_k)², index order
  kPassSceApply = 10,   // out = base + sce_mixed_delta(kept deltas, model weights)
  // DELLA (method_della.h): probs[k * n_elems + e] = della_keep_probability of the
  // ascending rank of |δ_k| in its rank group, for models that select; then kPassL1
  // and kPassApply with kProbDraw.
  kPassDellaRank = 11,
  // Dot products (reduce.h): sums[k * n_tiles + tile] = Σ double(g) * double(x_k) in
  // index order, g = models[0] and x_k = models[k + 1] (F64 values read whole).
  kPassDot = 12,
};

// How a task job sparsifies its deltas.
enum SparsifyMode : uint32_t {
  kKeepAll = 0,     // Sparsify::kNone
  kRankWindow = 1,  // Sparsify::kMagnitude / kOutliers: keep ranks [rank_lo, rank_hi)
  kRandomDraw = 2,  // Sparsify::kRandom (DARE)
  kProbDraw = 3,    // DELLA: DARE's draw against probs (selecting models) or density
};

// One bound of a rank window ("rank < r", see RankWindowBound in method_kernels.h).
struct SelDesc {
  uint32_t all = 0;
  uint32_t none = 1;
  uint32_t active = 0;     // histogram passes: this selection is still being searched
  uint32_t need_ties = 0;  // some, not all, elements equal to the threshold are kept
  uint32_t hi_bin = 0;
  uint32_t threshold = 0;
  uint64_t ties_keep = 0;
};

// One model of a task job (or one input of a Gram job: ptr/dtype only; of an SCE job:
// ptr/dtype, and its weight in the apply pass).
struct ModelDesc {
  const void* ptr = nullptr;  // the staged chunk's element 0
  uint32_t dtype = 0;         // a ladle::DType
  uint32_t selects = 0;       // the model's rank window needs statistics
  float weight = 1.0f;
  float density = 1.0f;       // kRandom; kProbDraw: the keep probability when !selects
  float floor = 1.0f;         // DELLA: fp32(density - epsilon)
  float epsilon = 0.0f;       // DELLA
  float l1_scale = 1.0f;      // Rescale::kL1, applied when l1_scaled
  uint32_t l1_scaled = 0;
  uint64_t stream = 0;        // DARE's per-model RNG stream
  SelDesc sel[2];             // rank window: [0] = lo, [1] = hi
};

// What one launch computes over the staged chunk [first_elem, first_elem + n_elems)
// of a tensor (first_elem a multiple of kMethodTileElems). Pointers are device memory
// (host memory for the emulator); per-tile arrays are indexed by the chunk's tiles.
struct MethodLaunch {
  uint32_t pass = kPassApply;
  uint64_t first_elem = 0;
  uint64_t n_elems = 0;
  uint64_t n_tiles = 0;
  const void* base = nullptr;  // task: θ_b; gram: the base input (nullptr: none)
  uint32_t base_dtype = 0;
  const ModelDesc* models = nullptr;
  uint32_t n_models = 0;
  uint32_t sparsify = kKeepAll;  // a SparsifyMode
  uint32_t consensus = 0;      // a ladle::MixConsensus
  uint32_t normalize = 0;
  uint32_t by_density = 0;     // kRandom with Rescale::kDensity
  float lambda = 1.0f;
  float plain_divisor = 1.0f;
  void* out = nullptr;
  uint32_t out_dtype = 0;
  unsigned long long* counts = nullptr;            // histograms or tie counts (zeroed)
  const unsigned long long* tie_prefix = nullptr;  // [(2k + s) * n_tiles + tile]
  double* sums = nullptr;                          // L1, Gram, SCE per-tile sums
  SelDesc select;  // SCE: the elements kept (tie_prefix[tile] when need_ties)
  float* probs = nullptr;       // DELLA: [k * n_elems + e], written by kPassDellaRank
  uint64_t chain_elems = 0;     // kPassL1: elements per chain (0: one tile)
  uint64_t group_len = 1;       // DELLA: elements per rank group
  uint64_t group_stride = 1;    // DELLA: distance between a group's elements
};

// Enqueues the pass on `stream` (a cudaStream_t) of the current device; returns the
// cudaError_t of the launch (0 on success).
int launch_method(const MethodLaunch& launch, void* stream);

// Runs the very same per-thread code on the host, block by block and lane by lane
// (with the block's barriers between phases), over host memory.
void emulate_method(const MethodLaunch& launch);

}  // namespace cuda
}  // namespace ladle
