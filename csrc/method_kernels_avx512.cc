// AVX-512 (F, BW, DQ, VL) method kernels: the passes that dominate the task methods on
// CPUs that have it (window_scan, sparsify_random, l1_sums, gram, task_tile); every other
// entry is the AVX2 set's. Compiled with the AVX-512 flags for this file only and
// chosen at run time (cpu_supports_avx512). Bit-identical to the scalar reference:
// lanes are independent elements given the reference's operations in its order (no
// FMA); masked adds leave a lane unchanged where the AVX2 code adds +0, which is the
// same value since those sums are never -0; the last partial vector uses masked loads
// and stores, its extra lanes zero and discarded.
#include <immintrin.h>

#include "method_kernels.h"

namespace ladle {
namespace {

constexpr size_t kLanes = 16;

inline __mmask16 first_lanes(size_t n) {
  return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// Elements 0..15 of `src` as fp32, lanes outside `mask` zero (and not read).
inline __m512 load16(DType dtype, const void* src, __mmask16 mask) {
  switch (dtype) {
    case DType::kBF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src)), 16));
    case DType::kF16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, src));
    default:
      return _mm512_maskz_loadu_ps(mask, src);
  }
}

inline bool loads16(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

inline __m512i abs_bits16(__m512 v) {
  return _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
}

// SplitMix64's finaliser (mix64) without its last xor-shift: z ^ (z >> 31) leaves
// bits 40..63 as they are, and DARE's draw is exactly those bits (dare_draw).
inline __m512i draw_bits8(__m512i z) {
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                         _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ull)));
  return _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                            _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull)));
}

// DARE's keep decisions of elements elem..elem+15 of `stream` (dare_keeps).
inline __mmask16 dare_kept16(uint64_t stream, uint64_t elem, DareLimit limit) {
  if (limit.all) return static_cast<__mmask16>(0xFFFF);
  const __m512i step = _mm512_set_epi64(
      static_cast<long long>(7 * kGolden), static_cast<long long>(6 * kGolden),
      static_cast<long long>(5 * kGolden), static_cast<long long>(4 * kGolden),
      static_cast<long long>(3 * kGolden), static_cast<long long>(2 * kGolden),
      static_cast<long long>(kGolden), 0);
  uint64_t first = stream + (elem + 1) * kGolden;
  __m512i lo = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first)), step);
  __m512i hi = _mm512_add_epi64(lo, _mm512_set1_epi64(static_cast<long long>(8 * kGolden)));
  const __m512i below = _mm512_set1_epi64(static_cast<long long>(limit.below));
  __mmask8 kept_lo = _mm512_cmplt_epu64_mask(draw_bits8(lo), below);
  __mmask8 kept_hi = _mm512_cmplt_epu64_mask(draw_bits8(hi), below);
  return static_cast<__mmask16>(kept_lo | (static_cast<unsigned>(kept_hi) << 8));
}

// Lanes of `bits` below the bound, ties resolved lane by lane in index order.
inline __mmask16 below16(RankWindowBound* b, __m512i bits) {
  if (b->all) return static_cast<__mmask16>(0xFFFF);
  if (b->none) return 0;
  const __m512i t = _mm512_set1_epi32(static_cast<int>(b->threshold));
  __mmask16 below = _mm512_cmpgt_epi32_mask(bits, t);  // both <= 0x7FFFFFFF
  __mmask16 eq = _mm512_cmpeq_epi32_mask(bits, t);
  for (; eq != 0; eq &= static_cast<__mmask16>(eq - 1))
    if (b->ties_seen++ < b->ties_keep) below |= static_cast<__mmask16>(eq & -eq);
  return below;
}

// W windows, a compile-time count: their bounds and counters stay in registers.
template <size_t W>
void window_scan_w(DType dtype, const void* src, const float* base, size_t n,
                   ScanWindow* windows) {
  constexpr size_t n_windows = W;
  __m512i hi[W], lo_minus_1[W];
  uint64_t higher[W];
  size_t count[W];
  for (size_t w = 0; w < n_windows; ++w) {
    hi[w] = _mm512_set1_epi32(static_cast<int>(windows[w].w_hi));
    lo_minus_1[w] = _mm512_set1_epi32(static_cast<int>(windows[w].w_lo) - 1);  // w_lo 0: -1
    higher[w] = 0;
    count[w] = 0;
  }
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  for (size_t i = 0; i < n; i += kLanes) {
    __mmask16 live = first_lanes(n - i);
    __m512 d = _mm512_sub_ps(load16(dtype, static_cast<const uint8_t*>(src) + i * item, live),
                             _mm512_maskz_loadu_ps(live, base + i));
    __m512i b = abs_bits16(d);
    for (size_t w = 0; w < n_windows; ++w) {
      __mmask16 gt = _mm512_mask_cmpgt_epi32_mask(live, b, hi[w]);
      __mmask16 in = _mm512_mask_cmpgt_epi32_mask(static_cast<__mmask16>(live & ~gt), b,
                                                  lo_minus_1[w]);
      higher[w] += static_cast<uint64_t>(__builtin_popcount(gt));
      // Packed in a register, stored whole (`found` has kWindowSlack entries spare).
      _mm512_storeu_si512(windows[w].found + count[w], _mm512_maskz_compress_epi32(in, b));
      count[w] += static_cast<size_t>(__builtin_popcount(in));
    }
  }
  for (size_t w = 0; w < n_windows; ++w) {
    windows[w].above += higher[w];
    windows[w].count = count[w];
  }
}

void window_scan_avx512(DType dtype, const void* src, const float* base, size_t n,
                        ScanWindow* windows, size_t n_windows) {
  static_assert(kMaxWindows == 2, "the counts window_scan_w is instantiated for");
  if (!loads16(dtype) || n_windows == 0 || n_windows > kMaxWindows)
    return scalar_method_kernels().window_scan(dtype, src, base, n, windows, n_windows);
  if (n_windows == 1) return window_scan_w<1>(dtype, src, base, n, windows);
  window_scan_w<2>(dtype, src, base, n, windows);
}

void sparsify_random_avx512(float* d, size_t n, uint64_t stream, uint64_t elem, float density,
                            bool by_density, uint64_t* keep) {
  const __m512 dens = _mm512_set1_ps(density);
  const DareLimit limit = dare_limit(density);
  for (size_t i = 0; i < n; i += kLanes) {
    __mmask16 live = first_lanes(n - i);
    __mmask16 kept = static_cast<__mmask16>(dare_kept16(stream, elem + i, limit) & live);
    __m512 v = _mm512_maskz_loadu_ps(live, d + i);
    if (by_density) v = _mm512_div_ps(v, dens);
    _mm512_mask_storeu_ps(d + i, live, _mm512_maskz_mov_ps(kept, v));
    if (keep)  // i is a multiple of 16: the 16 bits never straddle a word
      keep[i / 64] |= static_cast<uint64_t>(kept) << (i % 64);
  }
}

// Rows r[t] (8 elements of tile t) as out[j]: lane t holds element j of row t, widened
// to fp64 (an 8x8 transpose: pairs, then quads, then halves).
inline void transpose_tiles8(const __m256 r[8], __m512d out[8]) {
  __m256 a[8], b[8];
  for (int t = 0; t < 8; t += 2) {
    a[t] = _mm256_unpacklo_ps(r[t], r[t + 1]);
    a[t + 1] = _mm256_unpackhi_ps(r[t], r[t + 1]);
  }
  for (int t = 0; t < 8; t += 4) {
    b[t] = _mm256_shuffle_ps(a[t], a[t + 2], 0x44);
    b[t + 1] = _mm256_shuffle_ps(a[t], a[t + 2], 0xEE);
    b[t + 2] = _mm256_shuffle_ps(a[t + 1], a[t + 3], 0x44);
    b[t + 3] = _mm256_shuffle_ps(a[t + 1], a[t + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    out[j] = _mm512_cvtps_pd(_mm256_permute2f128_ps(b[j], b[j + 4], 0x20));
    out[j + 4] = _mm512_cvtps_pd(_mm256_permute2f128_ps(b[j], b[j + 4], 0x31));
  }
}

// Element i + j (j < 8) of the 8 tiles at v (tile t at v + t * kMethodTileElems) as
// out[j]: lane t holds tile t's element, widened to fp64.
inline void load_tiles8(const float* v, size_t i, __m512d out[8]) {
  __m256 r[8];
  for (int t = 0; t < 8; ++t) r[t] = _mm256_loadu_ps(v + t * kMethodTileElems + i);
  transpose_tiles8(r, out);
}

// Elements 0..7 of `src` as fp32.
inline __m256 load8(DType dtype, const void* src) {
  switch (dtype) {
    case DType::kBF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(src))), 16));
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(src)));
    default:
      return _mm256_loadu_ps(static_cast<const float*>(src));
  }
}

// Element i + j (j < 8) of the 8 tiles of `src` (`item` bytes per element), less the
// base's rows b[t] when b is set (fp32, as the delta kernel subtracts), as out[j]:
// lane t holds tile t's element, widened to fp64.
inline void delta_tiles8(DType dtype, const uint8_t* src, size_t item, size_t i,
                         const __m256* b, __m512d out[8]) {
  __m256 r[8];
  for (int t = 0; t < 8; ++t) {
    r[t] = load8(dtype, src + (t * kMethodTileElems + i) * item);
    if (b) r[t] = _mm256_sub_ps(r[t], b[t]);
  }
  transpose_tiles8(r, out);
}

constexpr size_t kGramVectors = 4;  // inputs whose 8 transposed rows stay in registers

// acc[p] += x[a][j] * x[b][j] (fp64) for every pair a <= b of the m inputs (row-major
// upper triangle, pair p), element j = 0..7 in order: one step of the Gram sums.
inline void add_pair_products(__m512d* acc, const __m512d (*x)[8], size_t m) {
  for (int j = 0; j < 8; ++j) {
    size_t p = 0;
    for (size_t a = 0; a < m; ++a)
      for (size_t b = a; b < m; ++b, ++p)
        acc[p] = _mm512_add_pd(acc[p], _mm512_mul_pd(x[a][j], x[b][j]));
  }
}

// gram_avx512 over inputs read from their files: each step loads 8 elements of each of
// the 8 tiles of every input, subtracts the base's (fp32, as the delta kernel does)
// and transposes them to one fp64 lane per tile, then multiplies the pairs in
// gram_avx512's order.
template <size_t M>
void gram_inputs_m(const GramInput* inputs, const float* base, double* sums) {
  constexpr size_t m = M, n_pairs = M * (M + 1) / 2;  // compile-time: chains in registers
  __m512d acc[n_pairs];
  for (size_t p = 0; p < n_pairs; ++p) acc[p] = _mm512_setzero_pd();
  size_t item[M];
  for (size_t a = 0; a < m; ++a) item[a] = static_cast<size_t>(dtype_bits(inputs[a].dtype) / 8);
  __m512d x[M][8];
  __m256 b[8];
  for (size_t i = 0; i < kMethodTileElems; i += 8) {
    if (base)
      for (int t = 0; t < 8; ++t) b[t] = _mm256_loadu_ps(base + t * kMethodTileElems + i);
    for (size_t a = 0; a < m; ++a)
      delta_tiles8(inputs[a].dtype, static_cast<const uint8_t*>(inputs[a].src), item[a], i,
                   base ? b : nullptr, x[a]);
    add_pair_products(acc, x, m);
  }
  for (size_t p = 0; p < n_pairs; ++p) _mm512_storeu_pd(sums + p * kGramTiles, acc[p]);
}

bool gram_inputs_avx512(const GramInput* inputs, size_t m, const float* base, double* sums) {
  for (size_t a = 0; a < m; ++a)
    if (!loads16(inputs[a].dtype)) return false;
  return with_small_count(m, [&](auto count) {
    gram_inputs_m<decltype(count)::value>(inputs, base, sums);
  });
}

// The 8x8 bit matrix m (bit 8j + t) transposed (bit 8t + j).
inline uint64_t transpose_bits8(uint64_t x) {
  uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  return x ^ t ^ (t << 28);
}

// One fp64 lane per tile as l1_sums runs them, the deltas made, transposed and
// dropped in registers: each step takes elements i..i+7 of the 8 tiles, draws the
// keep decisions of those 64 elements in the transposed order (DARE's counters are
// per element, so any order draws the same), adds |delta| to the "before" chain of
// each tile and, where kept, to its "after" chain (a masked add keeps the lane,
// which is what adding l1_sums's +0 does: the sums are never -0).
// M models (a compile-time count, so the chains stay in registers: a runtime count
// kept them on the stack, a store and load in every add's dependency chain).
template <size_t M>
void dare_norms_m(const DareNormModel* models, const float* base, uint64_t elem, double* sums) {
  constexpr size_t m = M;
  const __m512d magnitude = _mm512_castsi512_pd(_mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll));
  const __m512i golden = _mm512_set1_epi64(static_cast<long long>(kGolden));
  alignas(64) uint64_t steps[8];  // lane t: t tiles of counters further
  for (int t = 0; t < 8; ++t) steps[t] = static_cast<uint64_t>(t) * kMethodTileElems * kGolden;
  const __m512i tile_step = _mm512_load_si512(steps);
  static_assert(M <= kDareNormModels, "one call's models");
  __m512d before[M], after[M];
  __m512i below[M];
  bool all[M];
  size_t item[M];
  for (size_t k = 0; k < m; ++k) {
    before[k] = after[k] = _mm512_setzero_pd();
    DareLimit limit = dare_limit(models[k].density);
    all[k] = limit.all;
    below[k] = _mm512_set1_epi64(static_cast<long long>(limit.below));
    item[k] = static_cast<size_t>(dtype_bits(models[k].dtype) / 8);
  }
  __m256 b[8];
  __m512d x[8];
  for (size_t i = 0; i < kMethodTileElems; i += 8) {
    for (int t = 0; t < 8; ++t) b[t] = _mm256_loadu_ps(base + t * kMethodTileElems + i);
#pragma GCC unroll 4
    for (size_t k = 0; k < m; ++k) {
      delta_tiles8(models[k].dtype, static_cast<const uint8_t*>(models[k].src), item[k], i, b, x);
      // Counter of element i + j of tile t: stream + (elem + t * tile + i + j + 1) * golden.
      __m512i counter = _mm512_add_epi64(
          _mm512_set1_epi64(static_cast<long long>(models[k].stream + (elem + i + 1) * kGolden)),
          tile_step);
      uint64_t kept_bits = 0;  // bit 8j + t
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        __m512d a = _mm512_and_pd(x[j], magnitude);
        before[k] = _mm512_add_pd(before[k], a);
        __mmask8 kept = all[k] ? static_cast<__mmask8>(0xFF)
                               : _mm512_cmplt_epu64_mask(draw_bits8(counter), below[k]);
        after[k] = _mm512_mask_add_pd(after[k], kept, after[k], a);
        kept_bits |= static_cast<uint64_t>(kept) << (8 * j);
        counter = _mm512_add_epi64(counter, golden);
      }
      if (uint64_t* keep = models[k].keep) {
        uint64_t by_tile = transpose_bits8(kept_bits);  // byte t: bits i..i+7 of tile t
        for (int t = 0; t < 8; ++t)
          keep[t * (kMethodTileElems / 64) + i / 64] |= ((by_tile >> (8 * t)) & 0xFF) << (i % 64);
      }
    }
  }
  for (size_t k = 0; k < m; ++k) {
    _mm512_storeu_pd(sums + 2 * k * kGramTiles, before[k]);
    _mm512_storeu_pd(sums + (2 * k + 1) * kGramTiles, after[k]);
  }
}

bool dare_norms_avx512(const DareNormModel* models, size_t m, const float* base, uint64_t elem,
                       double* sums) {
  for (size_t k = 0; k < m; ++k)
    if (!loads16(models[k].dtype)) return false;
  return with_small_count(m, [&](auto count) {
    dare_norms_m<decltype(count)::value>(models, base, elem, sums);
  });
}

static_assert(kGramTiles == 8, "one fp64 lane per tile of a group");

// Lane t of acc[a] sums |tile t| of array a in index order; every array's chain
// advances each step, so up to kL1Arrays chains keep the adder busy.
void l1_sums_avx512(const float* const* v, size_t m, double* sums) {
  const __m512d magnitude = _mm512_castsi512_pd(_mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll));
  __m512d acc[kL1Arrays];
  for (size_t a = 0; a < m; ++a) acc[a] = _mm512_setzero_pd();
  __m512d x[8];
  for (size_t i = 0; i < kMethodTileElems; i += 8) {
    for (size_t a = 0; a < m; ++a) {
      load_tiles8(v[a], i, x);
      for (int j = 0; j < 8; ++j) acc[a] = _mm512_add_pd(acc[a], _mm512_and_pd(x[j], magnitude));
    }
  }
  for (size_t a = 0; a < m; ++a) _mm512_storeu_pd(sums + a * kGramTiles, acc[a]);
}


// Lane t of acc[p] sums tile t of pair p (row-major upper triangle) in index order:
// each input's 8 tiles are transposed once per 8 elements and every pair multiplies
// the rows in fp64, 8 tiles per vector.
void gram_avx512(const float* const* v, size_t m, double* sums) {
  if (m > kGramVectors) return avx2_method_kernels()->gram(v, m, sums);
  constexpr size_t kMaxPairs = kGramVectors * (kGramVectors + 1) / 2;
  __m512d acc[kMaxPairs];
  size_t n_pairs = m * (m + 1) / 2;
  for (size_t p = 0; p < n_pairs; ++p) acc[p] = _mm512_setzero_pd();
  __m512d x[kGramVectors][8];
  for (size_t i = 0; i < kMethodTileElems; i += 8) {
    for (size_t a = 0; a < m; ++a) load_tiles8(v[a], i, x[a]);
    add_pair_products(acc, x, m);
  }
  for (size_t p = 0; p < n_pairs; ++p) _mm512_storeu_pd(sums + p * kGramTiles, acc[p]);
}

// The weighted delta of model `m` for the 16 elements at `at` (element i of the tile),
// sparsified as S says.
template <TileSparsify S>
inline __m512 model_lanes(uint64_t tile_elem, TileModel& m, const void* at, size_t i,
                          __m512 b, __mmask16 live, DareLimit limit) {
  __m512 d = _mm512_sub_ps(load16(m.dtype, at, live), b);
  if constexpr (S == TileSparsify::kRank) {
    __m512i bits = abs_bits16(d);
    __mmask16 below_lo = below16(&m.lo, bits);
    __mmask16 below_hi = below16(&m.hi, bits);
    d = _mm512_maskz_mov_ps(static_cast<__mmask16>(~below_lo & below_hi), d);
  } else if constexpr (S == TileSparsify::kRandom) {
    __mmask16 kept = dare_kept16(m.stream, tile_elem + i, limit);
    if (m.by_density) d = _mm512_div_ps(d, _mm512_set1_ps(m.density));
    d = _mm512_maskz_mov_ps(kept, d);
  } else if constexpr (S == TileSparsify::kKept) {
    auto kept = static_cast<__mmask16>((m.keep[i / 64] >> (i % 64)) & 0xFFFF);
    if (m.by_density) d = _mm512_div_ps(d, _mm512_set1_ps(m.density));
    d = _mm512_maskz_mov_ps(kept, d);
  }
  if (m.scaled) d = _mm512_mul_ps(d, _mm512_set1_ps(m.scale));
  if (m.weight != 1.0f) d = _mm512_mul_ps(d, _mm512_set1_ps(m.weight));
  return d;
}

// base + the docs/methods.md mix of 16 elements' weighted deltas v[0..n_models).
// Always inlined, as mix8 (avx2_lanes.h).
__attribute__((always_inline)) inline __m512 mix16(const MixSpec& spec, const __m512* v,
                                                   size_t n_models, __m512 base) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 sum = zero, divisor = _mm512_set1_ps(spec.plain_divisor);
  if (spec.consensus == MixConsensus::kNone) {
    for (size_t k = 0; k < n_models; ++k) sum = _mm512_add_ps(sum, v[k]);
  } else {
    __mmask16 positive;  // majority +1 lanes
    if (spec.consensus == MixConsensus::kSum) {
      __m512 total = zero;
      for (size_t k = 0; k < n_models; ++k) total = _mm512_add_ps(total, v[k]);
      positive = _mm512_cmp_ps_mask(total, zero, _CMP_GE_OQ);
    } else {
      const __m512i one = _mm512_set1_epi32(1);
      __m512i count = _mm512_setzero_si512();
      for (size_t k = 0; k < n_models; ++k) {
        count = _mm512_mask_add_epi32(count, _mm512_cmp_ps_mask(v[k], zero, _CMP_GT_OQ), count, one);
        count = _mm512_mask_sub_epi32(count, _mm512_cmp_ps_mask(v[k], zero, _CMP_LT_OQ), count, one);
      }
      positive = _mm512_cmpgt_epi32_mask(count, _mm512_set1_epi32(-1));
    }
    __m512 weight = zero;
    for (size_t k = 0; k < n_models; ++k) {
      __mmask16 agree = static_cast<__mmask16>(
          (_mm512_cmp_ps_mask(v[k], zero, _CMP_GT_OQ) & positive) |
          (_mm512_cmp_ps_mask(v[k], zero, _CMP_LT_OQ) & ~positive));
      sum = _mm512_mask_add_ps(sum, agree, sum, v[k]);
      weight = _mm512_mask_add_ps(weight, agree, weight, _mm512_set1_ps(spec.weights[k]));
    }
    divisor = _mm512_mask_mov_ps(weight, _mm512_cmp_ps_mask(weight, zero, _CMP_EQ_OQ),
                                 _mm512_set1_ps(1.0f));
  }
  if (spec.normalize) sum = _mm512_div_ps(sum, divisor);
  if (spec.lambda != 1.0f) sum = _mm512_mul_ps(sum, _mm512_set1_ps(spec.lambda));
  return _mm512_add_ps(base, sum);
}

constexpr size_t kFusedModels = 64;  // 16 lanes each on the stack: 4 KiB

// The task tile of N models (N <= kFusedModels) sparsified as S. A compile-time N
// (the common counts) unrolls the model loop, so the lanes and limits stay in
// registers rather than on the stack, and S drops the per-vector switch.
template <size_t N, TileSparsify S>
void task_tile_n(TaskTile& tile, size_t n_models, const float* base, float* out, size_t n) {
  constexpr bool fixed = N <= 4;
  const size_t count = fixed ? N : n_models;
  // Local copies of the models and the mix (copy_tile_models).
  TileModel models[N];
  size_t item[N];  // bytes per element of each model's source
  copy_tile_models(tile, count, models, item);
  const MixSpec mix = tile.mix;
  const uint64_t elem = tile.elem;
  __m512 v[N];
  DareLimit limit[N];
  for (size_t k = 0; k < count; ++k) limit[k] = dare_limit(models[k].density);
  for (size_t i = 0; i < n; i += kLanes) {
    __mmask16 live = first_lanes(n - i);
    __m512 b = _mm512_maskz_loadu_ps(live, base + i);
#pragma GCC unroll 4
    for (size_t k = 0; k < count; ++k) {
      TileModel& m = models[k];
      v[k] = model_lanes<S>(elem, m, static_cast<const uint8_t*>(m.src) + i * item[k], i, b,
                            live, limit[k]);
    }
    _mm512_mask_storeu_ps(out + i, live, mix16(mix, v, count, b));
  }
  if constexpr (S == TileSparsify::kRank) return_rank_cursors(tile, models, count);
}

void task_tile_avx512(TaskTile& tile, const float* base, float* out, size_t n) {
  bool fits = tile.n_models <= kFusedModels;
  for (size_t k = 0; k < tile.n_models && fits; ++k) fits = loads16(tile.models[k].dtype);
  if (!fits) return task_tile_composed(*avx2_method_kernels(), tile, base, out, n);
  with_tile_constants<kFusedModels>(tile, [&](auto count, auto kind) {
    task_tile_n<decltype(count)::value, decltype(kind)::value>(tile, tile.n_models, base, out, n);
  });
}

}  // namespace

const MethodKernels* avx512_method_kernels() {
  static const MethodKernels kAvx512 = [] {
    MethodKernels k = *avx2_method_kernels();
    k.name = "avx512";
    k.window_scan = window_scan_avx512;
    k.sparsify_random = sparsify_random_avx512;
    k.task_tile = task_tile_avx512;
    k.l1_sums = l1_sums_avx512;
    k.gram = gram_avx512;
    k.dare_norms = dare_norms_avx512;
    k.gram_inputs = gram_inputs_avx512;
    return k;
  }();
  return &kAvx512;
}

}  // namespace ladle
