// Per-tile kernels of the merge methods (methods.h): deltas, the |delta| histograms
// of rank selection, DARE's and the rank window's sparsification, the per-element
// mix, and the fp64 Gram sums. A scalar reference (method_kernels_cpu.cc) and an AVX2
// set (method_kernels_avx2.cc, compiled with -mavx2 -mf16c only there and chosen at
// run time) compute the same bits: the same fp32/fp64 operations per element in the
// same order, no FMA; vectors only run independent elements (or tiles) side by side.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "dtype.h"
#include "kernels.h"

namespace ladle {

// Elements per tile: the unit of tie counting and of partial sums. Chunks are
// whole multiples of it, which is what makes results chunk-size independent.
constexpr uint64_t kMethodTileElems = 2048;
// Tiles the fp64 sums (Gram, L1) run side by side, one fp64 lane each: each tile's
// sum is a chain of dependent adds in index order, so independent tiles are what
// keeps the adder busy (two 4-lane vectors of chains).
constexpr size_t kGramTiles = 8;
// Rank selection's first histogram: bins of the high 16 bits of |delta| (sign cleared),
// counted into kHiHistCopies interleaved copies so equal neighbours do not wait on
// each other's increments; the caller adds the copies up.
constexpr uint32_t kHiHistBins = 1u << 15;
constexpr size_t kHiHistCopies = 4;

inline uint32_t abs_bits(float x) { return bits_from_f32(x) & 0x7FFFFFFFu; }

// "rank < r" of an element, in index order within one tile (docs/methods.md): true
// when all, false when none, else |delta| bits > threshold, or == threshold and
// fewer than ties_keep equal elements came before it (ties_seen counts them).
struct RankWindowBound {
  bool all = false;
  bool none = true;
  uint32_t threshold = 0;
  uint64_t ties_keep = 0;
  uint64_t ties_seen = 0;  // updated by the kernel
};

// One step of the cursor: whether the element with |delta| bits `bits` is below.
inline bool rank_below(RankWindowBound* b, uint32_t bits) {
  if (b->all) return true;
  if (b->none) return false;
  if (bits != b->threshold) return bits > b->threshold;
  return b->ties_seen++ < b->ties_keep;
}

enum class MixConsensus : uint8_t { kNone, kSum, kCount };

// How the weighted deltas of one tile become the output's fp32 values.
struct MixSpec {
  MixConsensus consensus = MixConsensus::kNone;
  bool normalize = false;
  float lambda = 1.0f;
  float plain_divisor = 1.0f;    // the unmasked divisor (kNone)
  const float* weights = nullptr;  // w_k, one per model
};

// The unmasked divisor of a mix (MixSpec::plain_divisor): the weights' sum (in model
// order), or 1 when it is within 1e-8 of zero.
inline float mix_plain_divisor(float weight_sum) {
  return (weight_sum < 0.0f ? -weight_sum : weight_sum) < 1e-8f ? 1.0f : weight_sum;
}

// Most arrays one l1_sums call takes.
constexpr size_t kL1Arrays = 8;

// Entries past n that window_scan may write in `found`.
constexpr size_t kWindowSlack = 16;
// Windows one window_scan call takes: a model's lower and upper rank bound.
constexpr size_t kMaxWindows = 2;

// One window [w_lo, w_hi] (w_lo <= w_hi <= 0x7FFFFFFF) of a window scan: it adds to
// `above` the elements with abs_bits(d) > w_hi, appends the abs_bits of those inside
// to `found` in index order and sets `count` to how many there were. `found` has
// room for n + kWindowSlack entries (vector stores run past).
struct ScanWindow {
  uint32_t w_lo = 0, w_hi = 0;
  uint64_t above = 0;
  uint32_t* found = nullptr;
  size_t count = 0;
};

// How the fused task program sparsifies one model's deltas (TaskTile).
enum class TileSparsify : uint8_t {
  kNone,    // every delta kept
  kRank,    // sparsify_rank with the model's lo/hi cursors
  kRandom,  // sparsify_random: DARE's draws (nothing recorded)
  kKept,    // sparsify_kept: DARE's decisions recorded by the norm pass
};

// One model of a fused task tile.
struct TileModel {
  DType dtype = DType::kF32;
  const void* src = nullptr;       // the tile's first element
  RankWindowBound lo, hi;          // kRank: cursors at the tile's start (advanced)
  uint64_t stream = 0;             // kRandom
  const uint64_t* keep = nullptr;  // kKept: the word of the tile's first element
  float density = 1.0f;            // kRandom, kKept
  bool by_density = false;         // kRandom, kKept: kept deltas divided by density
  bool scaled = false;             // Rescale::kL1: kept deltas times `scale`
  float scale = 1.0f;
  float weight = 1.0f;             // then times the weight (skipped when exactly 1)
};

struct TaskTile {
  TileSparsify sparsify = TileSparsify::kNone;
  uint64_t elem = 0;  // the tile's first element in its tensor (DARE's counters)
  TileModel* models = nullptr;
  size_t n_models = 0;
  MixSpec mix;
  float* wd = nullptr;  // scratch of n_models * kMethodTileElems floats
};

// A fused task tile's local copies of its first `count` models and the bytes per
// element of each one's source: stores to `out` may alias the tile's floats, so read
// through `tile` every field was reloaded, and its branch retaken, for every vector.
inline void copy_tile_models(const TaskTile& tile, size_t count, TileModel* models,
                             size_t* item) {
  for (size_t k = 0; k < count; ++k) {
    models[k] = tile.models[k];
    item[k] = static_cast<size_t>(dtype_bits(models[k].dtype) / 8);
  }
}

// The rank cursors the local copies advanced, back into the tile.
inline void return_rank_cursors(TaskTile& tile, const TileModel* models, size_t count) {
  for (size_t k = 0; k < count; ++k) {
    tile.models[k].lo = models[k].lo;
    tile.models[k].hi = models[k].hi;
  }
}

// Models one dare_norms call takes (two sum chains each: kL1Arrays in all).
constexpr size_t kDareNormModels = kL1Arrays / 2;

// One model of dare_norms: its group's first element, its DARE stream and density,
// and where its keep bits go (the word of the group's first element; null: none).
struct DareNormModel {
  DType dtype = DType::kF32;
  const void* src = nullptr;
  uint64_t stream = 0;
  float density = 1.0f;
  uint64_t* keep = nullptr;
};

// One input of gram_inputs: a whole group's first element in its file.
struct GramInput {
  DType dtype = DType::kF32;
  const void* src = nullptr;
};

struct MethodKernels {
  const char* name;
  // d[i] = fp32(x[i]) - base[i]
  void (*delta)(DType dtype, const void* src, const float* base, float* d, size_t n);
  // ++hist[(i % kHiHistCopies) * kHiHistBins + (abs_bits(d[i]) >> 16)]
  void (*histogram_hi)(const float* d, size_t n, uint32_t* hist);
  // For each i with abs_bits(d[i]) >> 16 == bin: ++hist[abs_bits(d[i]) & 0xFFFF], and
  // (when `found` is not null) those low 16 bits appended to it in index order.
  // Returns how many there were.
  size_t (*histogram_lo)(const float* d, size_t n, uint32_t bin, uint32_t* hist,
                         uint16_t* found);
  // Elements whose abs_bits equal `bits`.
  uint64_t (*count_equal)(const float* d, size_t n, uint32_t bits);
  // Rank selection's windows (ScanWindow, up to kMaxWindows of one model) over the
  // deltas d[i] = fp32(src[i]) - base[i] (as `delta` computes them, never stored), all
  // from one read of the tile.
  void (*window_scan)(DType dtype, const void* src, const float* base, size_t n,
                      ScanWindow* windows, size_t n_windows);
  // DARE: keep d[i] when float(u24(stream, elem + i)) * 2^-24 < density (then d/density
  // when by_density), else +0. When `keep` is not null the decisions are also recorded
  // there (bit i % 64 of keep[i / 64] set for a kept element; the caller zeroes the
  // words), so a second pass over the same elements need not draw them again.
  void (*sparsify_random)(float* d, size_t n, uint64_t stream, uint64_t elem, float density,
                          bool by_density, uint64_t* keep);
  // DARE from recorded decisions (as sparsify_random wrote them to `keep`): d[i] (or
  // d[i]/density when by_density) where bit i is set, else +0.
  void (*sparsify_kept)(float* d, size_t n, const uint64_t* keep, float density,
                        bool by_density);
  // Keeps d[i] when !(rank < lo) && (rank < hi), else +0; advances both cursors.
  void (*sparsify_rank)(float* d, size_t n, RankWindowBound* lo, RankWindowBound* hi);
  // d[i] = fp32(d[i] * s)
  void (*scale)(float* d, size_t n, float s);
  // For kGramTiles tiles side by side (tile t at v[a] + t * kMethodTileElems,
  // zero-padded) of m <= kL1Arrays arrays at once (the deltas of a few models before
  // and after sparsification; their chains interleave so the adder is not idle):
  // sums[a * kGramTiles + t] = sum of |double(x)| over tile t of v[a] in index order,
  // from +0.
  void (*l1_sums)(const float* const* v, size_t m, double* sums);
  // out[i] = fp32(base[i] + mixed_i) from wd[k * stride + i] (k < n_models), where
  // mixed is the docs/methods.md mix (sign election, normalize, lambda).
  void (*mix)(const MixSpec& spec, const float* wd, size_t stride, size_t n_models,
              const float* base, float* out, size_t n);
  // For kGramTiles tiles side by side: v[a] points at kGramTiles * kMethodTileElems
  // floats (tile t at t * kMethodTileElems; zero-padded), and for every pair a <= b
  // (row-major upper triangle, pair p) sums[p * kGramTiles + t] = sum over the
  // tile's elements in index order of double(v[a]) * double(v[b]), from +0.
  void (*gram)(const float* const* v, size_t m, double* sums);
  // The task program of one tile (tile.n_models models, n <= kMethodTileElems), exactly
  // as task_tile_composed computes it: for each model, delta, its sparsification,
  // the L1 rescale and the weight; then mix into out (fp32).
  void (*task_tile)(TaskTile& tile, const float* base, float* out, size_t n);
  // DARE's norm pass (Rescale::kL1) over one whole group, kGramTiles tiles from element
  // `elem` (base: its kGramTiles * kMethodTileElems fp32 values), for m <=
  // kDareNormModels models, without storing their deltas: the sums l1_sums gives for
  // each model's delta (array 2k) and that delta after sparsify_random (array 2k + 1,
  // by_density false; its keep bits recorded when models[k].keep is set). False, and
  // nothing written, for a dtype it does not load; null in sets without it (the
  // caller then composes delta, sparsify_random and l1_sums).
  bool (*dare_norms)(const DareNormModel* models, size_t m, const float* base, uint64_t elem,
                     double* sums);
  // `gram` of m inputs read straight from their files over one whole group (kGramTiles
  // tiles): v[a] = fp32(inputs[a]) - base (the delta kernel; base: the group's fp32
  // values) or fp32(inputs[a]) when base is null, never stored. False, and nothing
  // written, for an m or dtype it does not take; null in sets without it.
  bool (*gram_inputs)(const GramInput* inputs, size_t m, const float* base, double* sums);
  // DELLA's draw against per-element keep probabilities: d[i] kept when
  // dare_keeps(stream, elem + i, p[i]) (then d[i] / p[i] when by_probability), else +0;
  // keep bits recorded as sparsify_random records them.
  void (*sparsify_prob)(float* d, const float* p, size_t n, uint64_t stream, uint64_t elem,
                        bool by_probability, uint64_t* keep);
  // SCE (method_sce_elems.h) over n elements of m models' deltas tv[k * stride + i]:
  // bits[i] = sce_variance_bits of element i, and
  // out[i] = base[i] + sce_mixed_delta of element i with weights w[k] (out may alias
  // base).
  void (*sce_variance)(const float* tv, size_t stride, size_t m, size_t n, uint32_t* bits);
  // Keep bits of n rank bit patterns (each <= 0x7FFFFFFF) against one bound: bit i %
  // 64 of keep[i / 64] set when rank_below(b, bits[i]) (the cursor advances in index
  // order); the caller zeroes the words.
  void (*rank_keep)(const uint32_t* bits, size_t n, RankWindowBound* b, uint64_t* keep);
  void (*sce_mix)(const float* tv, size_t stride, size_t m, const float* w, const float* base,
                  float* out, size_t n);
};

// The Gram sums of one short run (n <= kMethodTileElems, e.g. a filter_wise row): for
// every pair a <= b (row-major upper triangle, pair p) sums[p] = sum over i < n in
// index order of double(v[a][i]) * double(v[b][i]), from +0: tile 0 of `gram` without
// its zero padding (+0 products added to a +0 start change no bit). The pairs' chains
// advance together, element by element, so the adder is not idle waiting on one
// chain. Scalar: exact for every m, and short rows are too short for vector set-up.
void gram_short(const float* const* v, size_t m, size_t n, double* sums);

// Calls fn(count) with m (1-4) as a compile-time constant (std::integral_constant);
// false, without calling it, for any other m.
template <class Fn>
bool with_small_count(size_t m, Fn&& fn) {
  switch (m) {
    case 1: fn(std::integral_constant<size_t, 1>{}); return true;
    case 2: fn(std::integral_constant<size_t, 2>{}); return true;
    case 3: fn(std::integral_constant<size_t, 3>{}); return true;
    case 4: fn(std::integral_constant<size_t, 4>{}); return true;
    default: return false;
  }
}

// Calls fn(count, kind) with the tile's model count (1-4; more: kMax, the caller then
// counting tile.n_models at run time) and its sparsification as compile-time constants
// (std::integral_constant), so a vector task tile can unroll its model loop and drop
// its per-vector switch.
template <size_t kMax, class Fn>
void with_tile_constants(const TaskTile& tile, Fn&& fn) {
  auto by_kind = [&](auto count) {
    using S = TileSparsify;
    switch (tile.sparsify) {
      case S::kNone: return fn(count, std::integral_constant<S, S::kNone>{});
      case S::kRank: return fn(count, std::integral_constant<S, S::kRank>{});
      case S::kRandom: return fn(count, std::integral_constant<S, S::kRandom>{});
      case S::kKept: return fn(count, std::integral_constant<S, S::kKept>{});
    }
  };
  switch (tile.n_models) {
    case 1: return by_kind(std::integral_constant<size_t, 1>{});
    case 2: return by_kind(std::integral_constant<size_t, 2>{});
    case 3: return by_kind(std::integral_constant<size_t, 3>{});
    case 4: return by_kind(std::integral_constant<size_t, 4>{});
    default: return by_kind(std::integral_constant<size_t, kMax>{});
  }
}

// The task program of one tile written as the per-step kernels of `k` in order, the
// models' weighted deltas staged in tile.wd: the reference of every task_tile.
void task_tile_composed(const MethodKernels& k, TaskTile& tile, const float* base, float* out,
                        size_t n);

const MethodKernels& scalar_method_kernels();
// Defined only when the AVX2 translation unit is compiled in.
const MethodKernels* avx2_method_kernels();
// The AVX2 set with the AVX-512 window_scan, sparsify_random, l1_sums, gram and task_tile (nullptr
// when that translation unit is not compiled in).
const MethodKernels* avx512_method_kernels();
// The set matching select_kernels(impl).
const MethodKernels& select_method_kernels(KernelImpl impl);

// mergekit's nearswap per element, in its torch order of fp32 operations:
// w = clamp(fp32(1 / max(|a − b|, 1e-6)) · t, 0, 1), out = w·b + (1 − w)·a (NaN stays
// NaN, as torch.clamp). `out` may alias `a`. Scalar only: elements are independent.
void near_swap_tile(const float* a, const float* b, float t, float* out, size_t n);

// SplitMix64's finaliser and DARE's draw (methods.h, dare_u24).
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
// The stream of model `model` (0-based, base excluded) of the tensor keyed `key`.
inline uint64_t dare_stream(uint64_t seed, uint64_t key, uint32_t model) {
  return mix64(mix64(mix64(seed) ^ key) ^ (static_cast<uint64_t>(model) + 1));
}
inline uint32_t dare_draw(uint64_t stream, uint64_t elem) {
  return static_cast<uint32_t>(mix64(stream + (elem + 1) * kGolden) >> 40);
}
inline bool dare_keeps(uint64_t stream, uint64_t elem, float density) {
  return static_cast<float>(dare_draw(stream, elem)) * 0x1p-24f < density;
}

// dare_keeps as an integer test: float(u) * 2^-24 < density (both sides exact) holds
// exactly when u < T = ceil(density * 2^24), i.e. when the finaliser's 64-bit word
// (whose bits 40..63 are u) is below T << 40; T = 2^24 (density >= 1) keeps every
// element, a NaN or non-positive density none (below 0).
struct DareLimit {
  bool all = false;
  uint64_t below = 0;
};
inline DareLimit dare_limit(float density) {
  double t = std::ceil(static_cast<double>(density) * 16777216.0);
  DareLimit limit;
  limit.all = t >= 16777216.0;
  if (!limit.all && t > 0.0) limit.below = static_cast<uint64_t>(t) << 40;
  return limit;
}

}  // namespace ladle
