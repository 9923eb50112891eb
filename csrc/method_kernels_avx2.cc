// AVX2 + F16C method kernels (method_kernels.h), compiled with -mavx2 -mf16c for this
// file only and used only after the run-time CPU check. Bit-identical to the scalar
// reference: lanes hold independent elements (the Gram kernel: independent tiles), each
// gets the reference's operations in the reference's order, no FMA; tails and the rare
// order-dependent lanes (ties at a rank threshold) go through the scalar code.
#include <algorithm>

#include "avx2_lanes.h"

namespace ladle {
namespace {

using avx2::abs_bits8;
using avx2::load8;

constexpr size_t kTile = kMethodTileElems;

void delta_avx2(DType dtype, const void* src, const float* base, float* d, size_t n) {
  if (!avx2::loads8(dtype)) return scalar_method_kernels().delta(dtype, src, base, d, n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_sub_ps(load8(dtype, src, i), _mm256_loadu_ps(base + i)));
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  scalar_method_kernels().delta(dtype, static_cast<const uint8_t*>(src) + i * item, base + i,
                                d + i, n - i);
}

void histogram_hi_avx2(const float* d, size_t n, uint32_t* hist) {
  static_assert(kHiHistCopies == 4, "lane j counts into copy j % 4");
  const __m256i copy = _mm256_setr_epi32(0, kHiHistBins, 2 * kHiHistBins, 3 * kHiHistBins, 0,
                                         kHiHistBins, 2 * kHiHistBins, 3 * kHiHistBins);
  alignas(32) uint32_t bins[8];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i b = _mm256_srli_epi32(abs_bits8(_mm256_loadu_ps(d + i)), 16);
    _mm256_store_si256(reinterpret_cast<__m256i*>(bins), _mm256_add_epi32(b, copy));
    for (uint32_t bin : bins) ++hist[bin];
  }
  scalar_method_kernels().histogram_hi(d + i, n - i, hist);
}

size_t histogram_lo_avx2(const float* d, size_t n, uint32_t bin, uint32_t* hist,
                         uint16_t* found) {
  size_t count = 0;
  const __m256i want = _mm256_set1_epi32(static_cast<int>(bin));
  alignas(32) uint32_t bits[8];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i b = abs_bits8(_mm256_loadu_ps(d + i));
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_srli_epi32(b, 16), want)));
    if (mask == 0) continue;
    _mm256_store_si256(reinterpret_cast<__m256i*>(bits), b);
    for (int j = 0; j < 8; ++j) {
      if (!(mask >> j & 1)) continue;
      ++hist[bits[j] & 0xFFFFu];
      if (found) found[count] = static_cast<uint16_t>(bits[j]);
      ++count;
    }
  }
  return count + scalar_method_kernels().histogram_lo(d + i, n - i, bin, hist,
                                                      found ? found + count : nullptr);
}

uint64_t count_equal_avx2(const float* d, size_t n, uint32_t bits) {
  const __m256i want = _mm256_set1_epi32(static_cast<int>(bits));
  uint64_t count = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i eq = _mm256_cmpeq_epi32(abs_bits8(_mm256_loadu_ps(d + i)), want);
    count += static_cast<uint64_t>(__builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(eq))));
  }
  return count + scalar_method_kernels().count_equal(d + i, n - i, bits);
}

// W windows, a compile-time count (as the AVX-512 scan): bounds, counters and
// destinations stay in registers.
template <size_t W>
void window_scan_w(DType dtype, const void* src, const float* base, size_t n,
                   ScanWindow* windows) {
  // abs_bits <= 0x7FFFFFFF: signed compares order them as unsigned ones would.
  __m256i hi[W], lo_minus_1[W];
  __m256i higher[W];  // per lane, minus the count above (n < 2^31)
  uint32_t* found[W];
  for (size_t w = 0; w < W; ++w) {
    hi[w] = _mm256_set1_epi32(static_cast<int>(windows[w].w_hi));
    lo_minus_1[w] = _mm256_set1_epi32(static_cast<int>(windows[w].w_lo) - 1);  // w_lo 0: -1
    higher[w] = _mm256_setzero_si256();
    found[w] = windows[w].found;
  }
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i b = abs_bits8(_mm256_sub_ps(load8(dtype, src, i), _mm256_loadu_ps(base + i)));
    for (size_t w = 0; w < W; ++w) {
      __m256i gt = _mm256_cmpgt_epi32(b, hi[w]);
      __m256i ge_lo = _mm256_cmpgt_epi32(b, lo_minus_1[w]);
      higher[w] = _mm256_add_epi32(higher[w], gt);
      // Branch-free: a window holds a few percent of the elements, spread at random.
      int in = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(gt, ge_lo)));
      found[w] += avx2::compress_store8(found[w], b, in);
    }
  }
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  for (size_t w = 0; w < W; ++w) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), higher[w]);
    for (int32_t lane : lanes) windows[w].above += static_cast<uint64_t>(-static_cast<int64_t>(lane));
    // The tail through the reference, its finds after the vector part's.
    size_t count = static_cast<size_t>(found[w] - windows[w].found);
    ScanWindow tail = windows[w];
    tail.found = found[w];
    tail.above = 0;
    scalar_method_kernels().window_scan(dtype, static_cast<const uint8_t*>(src) + i * item,
                                        base + i, n - i, &tail, 1);
    windows[w].above += tail.above;
    windows[w].count = count + tail.count;
  }
}

void window_scan_avx2(DType dtype, const void* src, const float* base, size_t n,
                      ScanWindow* windows, size_t n_windows) {
  if (!avx2::loads8(dtype) || n_windows > kMaxWindows)
    return scalar_method_kernels().window_scan(dtype, src, base, n, windows, n_windows);
  static_assert(kMaxWindows == 2, "the counts window_scan_w is instantiated for");
  if (n_windows == 1) return window_scan_w<1>(dtype, src, base, n, windows);
  if (n_windows == 2) window_scan_w<2>(dtype, src, base, n, windows);
}

// Stores the kept lanes of v (else +0) at d + i and, with `keep`, their keep bits
// (i is a multiple of 8: the 8 bits never straddle a word).
inline void store_kept8(float* d, size_t i, __m256 kept, __m256 v, uint64_t* keep) {
  _mm256_storeu_ps(d + i, _mm256_and_ps(kept, v));
  if (keep) keep[i / 64] |= static_cast<uint64_t>(_mm256_movemask_ps(kept)) << (i % 64);
}

void sparsify_random_avx2(float* d, size_t n, uint64_t stream, uint64_t elem, float density,
                          bool by_density, uint64_t* keep) {
  __m256i even = avx2::dare_even_counters(stream, elem);
  const __m256i step = _mm256_set1_epi64x(static_cast<long long>(8 * kGolden));
  const __m256i test = avx2::dare_test4(density);
  const __m256 dens = _mm256_set1_ps(density);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(d + i);
    if (by_density) v = _mm256_div_ps(v, dens);
    store_kept8(d, i, avx2::dare_kept8(even, test), v, keep);
    even = _mm256_add_epi64(even, step);
  }
  // The last < 8 elements through the reference, their bits shifted into place.
  uint64_t tail = 0;
  scalar_method_kernels().sparsify_random(d + i, n - i, stream, elem + i, density, by_density,
                                          keep ? &tail : nullptr);
  if (keep && i < n) keep[i / 64] |= tail << (i % 64);
}

void sparsify_prob_avx2(float* d, const float* p, size_t n, uint64_t stream, uint64_t elem,
                        bool by_probability, uint64_t* keep) {
  __m256i even = avx2::dare_even_counters(stream, elem);
  const __m256i golden = _mm256_set1_epi64x(static_cast<long long>(kGolden));
  const __m256i step = _mm256_set1_epi64x(static_cast<long long>(8 * kGolden));
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // The 24-bit draws in element order (odd elements' in the odd 32-bit lanes), then
    // dare_keeps's own float compare against each element's probability.
    __m256i u_even = _mm256_srli_epi64(avx2::draw_high4(even), 40);
    __m256i u_odd = _mm256_srli_epi64(avx2::draw_high4(_mm256_add_epi64(even, golden)), 40);
    __m256i u = _mm256_blend_epi32(u_even, _mm256_slli_epi64(u_odd, 32), 0xAA);
    __m256 prob = _mm256_loadu_ps(p + i);
    __m256 kept = _mm256_cmp_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(u), _mm256_set1_ps(0x1p-24f)),
                                prob, _CMP_LT_OQ);
    __m256 v = _mm256_loadu_ps(d + i);
    if (by_probability) v = _mm256_div_ps(v, prob);
    store_kept8(d, i, kept, v, keep);
    even = _mm256_add_epi64(even, step);
  }
  // The last < 8 elements through the reference, their bits shifted into place.
  uint64_t tail = 0;
  scalar_method_kernels().sparsify_prob(d + i, p + i, n - i, stream, elem + i, by_probability,
                                        keep ? &tail : nullptr);
  if (keep && i < n) keep[i / 64] |= tail << (i % 64);
}

void sparsify_kept_avx2(float* d, size_t n, const uint64_t* keep, float density,
                        bool by_density) {
  const __m256 dens = _mm256_set1_ps(density);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 kept = avx2::kept_lanes8(static_cast<int>((keep[i / 64] >> (i % 64)) & 0xFF));
    __m256 v = _mm256_loadu_ps(d + i);
    if (by_density) v = _mm256_div_ps(v, dens);
    _mm256_storeu_ps(d + i, _mm256_and_ps(kept, v));
  }
  for (; i < n; ++i) {
    bool kept = (keep[i / 64] >> (i % 64)) & 1;
    d[i] = kept ? (by_density ? d[i] / density : d[i]) : 0.0f;
  }
}

void sparsify_rank_avx2(float* d, size_t n, RankWindowBound* lo, RankWindowBound* hi) {
  const avx2::BoundLanes lo_lanes = avx2::bound_lanes(*lo), hi_lanes = avx2::bound_lanes(*hi);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(d + i);
    __m256i bits = abs_bits8(v);
    __m256i below_lo = avx2::below8(lo, lo_lanes, bits);
    __m256i below_hi = avx2::below8(hi, hi_lanes, bits);
    __m256 keep = _mm256_castsi256_ps(_mm256_andnot_si256(below_lo, below_hi));
    _mm256_storeu_ps(d + i, _mm256_and_ps(keep, v));
  }
  scalar_method_kernels().sparsify_rank(d + i, n - i, lo, hi);
}

void rank_keep_avx2(const uint32_t* bits, size_t n, RankWindowBound* b, uint64_t* keep) {
  const avx2::BoundLanes lanes = avx2::bound_lanes(*b);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i));
    int below = _mm256_movemask_ps(_mm256_castsi256_ps(avx2::below8(b, lanes, v)));
    // i is a multiple of 8: the 8 bits never straddle a word
    keep[i / 64] |= static_cast<uint64_t>(below) << (i % 64);
  }
  uint64_t tail = 0;  // the last < 8 through the reference, shifted into place
  scalar_method_kernels().rank_keep(bits + i, n - i, b, &tail);
  if (i < n) keep[i / 64] |= tail << (i % 64);
}

void scale_avx2(float* d, size_t n, float s) {
  const __m256 sv = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_loadu_ps(d + i), sv));
  scalar_method_kernels().scale(d + i, n - i, s);
}

// Element i + j of tiles 0..3 in the four fp64 lanes of x[j].
inline void load_tiles4(const float* v, size_t i, __m256d x[4]) {
  __m128 r0 = _mm_loadu_ps(v + i), r1 = _mm_loadu_ps(v + kTile + i);
  __m128 r2 = _mm_loadu_ps(v + 2 * kTile + i), r3 = _mm_loadu_ps(v + 3 * kTile + i);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  x[0] = _mm256_cvtps_pd(r0);
  x[1] = _mm256_cvtps_pd(r1);
  x[2] = _mm256_cvtps_pd(r2);
  x[3] = _mm256_cvtps_pd(r3);
}

static_assert(kGramTiles == 2 * 4, "two vectors of four fp64 lanes, one tile each");

// Lane t of acc[2p + h] sums tile 4h + t of array p of a pair in index order; the
// pair's four chains interleave (a pair at a time: AVX2 has 16 vector registers).
void l1_sums_avx2(const float* const* v, size_t m, double* sums) {
  const __m256d magnitude = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  for (size_t first = 0; first < m; first += 2) {
    size_t pair = std::min<size_t>(2, m - first);
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                      _mm256_setzero_pd()};
    __m256d x[4];
    for (size_t i = 0; i < kTile; i += 4) {
      for (size_t p = 0; p < pair; ++p) {
        for (int h = 0; h < 2; ++h) {
          load_tiles4(v[first + p] + h * 4 * kTile, i, x);
          for (int j = 0; j < 4; ++j)
            acc[2 * p + h] = _mm256_add_pd(acc[2 * p + h], _mm256_and_pd(x[j], magnitude));
        }
      }
    }
    for (size_t p = 0; p < pair; ++p) {
      _mm256_storeu_pd(sums + (first + p) * kGramTiles, acc[2 * p]);
      _mm256_storeu_pd(sums + (first + p) * kGramTiles + 4, acc[2 * p + 1]);
    }
  }
}

void mix_avx2(const MixSpec& spec, const float* wd, size_t stride, size_t n_models,
              const float* base, float* out, size_t n) {
  if (n_models > avx2::kFusedModels)
    return scalar_method_kernels().mix(spec, wd, stride, n_models, base, out, n);
  __m256 v[avx2::kFusedModels];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t k = 0; k < n_models; ++k) v[k] = _mm256_loadu_ps(wd + k * stride + i);
    _mm256_storeu_ps(out + i, avx2::mix8(spec, v, n_models, _mm256_loadu_ps(base + i)));
  }
  scalar_method_kernels().mix(spec, wd + i, stride, n_models, base + i, out + i, n - i);
}

constexpr size_t kGramMaxVectors = 8;

// Lane t of acc[p][h] sums tile 4h + t of pair p, in index order.
void gram_avx2(const float* const* v, size_t m, double* sums) {
  if (m > kGramMaxVectors) return scalar_method_kernels().gram(v, m, sums);
  constexpr size_t kMaxPairs = kGramMaxVectors * (kGramMaxVectors + 1) / 2;
  __m256d acc[kMaxPairs][2];
  size_t n_pairs = m * (m + 1) / 2;
  for (size_t p = 0; p < n_pairs; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_pd();
  __m256d x[kGramMaxVectors][2][4];
  for (size_t i = 0; i < kTile; i += 4) {
    for (size_t a = 0; a < m; ++a)
      for (int h = 0; h < 2; ++h) load_tiles4(v[a] + h * 4 * kTile, i, x[a][h]);
    size_t p = 0;
    for (size_t a = 0; a < m; ++a)
      for (size_t b = a; b < m; ++b, ++p)
        for (int h = 0; h < 2; ++h)
          for (int j = 0; j < 4; ++j)
            acc[p][h] = _mm256_add_pd(acc[p][h], _mm256_mul_pd(x[a][h][j], x[b][h][j]));
  }
  for (size_t p = 0; p < n_pairs; ++p) {
    _mm256_storeu_pd(sums + p * kGramTiles, acc[p][0]);
    _mm256_storeu_pd(sums + p * kGramTiles + 4, acc[p][1]);
  }
}

// Elements 0..3 at `src` as fp32.
inline __m128 load4(DType dtype, const uint8_t* src) {
  __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
  switch (dtype) {
    case DType::kBF16:
      return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
    case DType::kF16:
      return _mm_cvtph_ps(h);
    default:
      return _mm_loadu_ps(reinterpret_cast<const float*>(src));
  }
}

// gram_avx2 over M inputs read from their files, half a group (tiles 4h..4h+3) at a
// time so the pairs' chains of a half fit the registers better: 4 elements of each
// tile loaded, the base subtracted in fp32, transposed to one fp64 lane per tile.
template <size_t M>
void gram_inputs_m(const GramInput* inputs, const float* base, double* sums) {
  constexpr size_t n_pairs = M * (M + 1) / 2;
  size_t item[M];
  for (size_t a = 0; a < M; ++a) item[a] = static_cast<size_t>(dtype_bits(inputs[a].dtype) / 8);
  for (int h = 0; h < 2; ++h) {
    __m256d acc[n_pairs];
    for (size_t p = 0; p < n_pairs; ++p) acc[p] = _mm256_setzero_pd();
    for (size_t i = 0; i < kTile; i += 4) {
      __m128 b[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
      if (base)
        for (int t = 0; t < 4; ++t) b[t] = _mm_loadu_ps(base + (4 * h + t) * kTile + i);
      __m256d x[M][4];
#pragma GCC unroll 4
      for (size_t a = 0; a < M; ++a) {
        const auto* src = static_cast<const uint8_t*>(inputs[a].src);
        __m128 r[4];
        for (int t = 0; t < 4; ++t) {
          r[t] = load4(inputs[a].dtype, src + ((4 * h + t) * kTile + i) * item[a]);
          if (base) r[t] = _mm_sub_ps(r[t], b[t]);
        }
        _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
        for (int j = 0; j < 4; ++j) x[a][j] = _mm256_cvtps_pd(r[j]);
      }
      size_t p = 0;
#pragma GCC unroll 4
      for (size_t a = 0; a < M; ++a)
        for (size_t c = a; c < M; ++c, ++p)
          for (int j = 0; j < 4; ++j)
            acc[p] = _mm256_add_pd(acc[p], _mm256_mul_pd(x[a][j], x[c][j]));
    }
    for (size_t p = 0; p < n_pairs; ++p) _mm256_storeu_pd(sums + p * kGramTiles + 4 * h, acc[p]);
  }
}

bool gram_inputs_avx2(const GramInput* inputs, size_t m, const float* base, double* sums) {
  for (size_t a = 0; a < m; ++a)
    if (!avx2::loads8(inputs[a].dtype)) return false;
  return with_small_count(m, [&](auto count) {
    gram_inputs_m<decltype(count)::value>(inputs, base, sums);
  });
}

// Each 64-bit lane's bits in reverse order.
inline __m256i reverse_bits64(__m256i x) {
  const __m256i bytes = _mm256_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8,
                                         7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
  const __m256i nibbles = _mm256_setr_epi8(0x0, 0x8, 0x4, 0xC, 0x2, 0xA, 0x6, 0xE, 0x1, 0x9,
                                           0x5, 0xD, 0x3, 0xB, 0x7, 0xF, 0x0, 0x8, 0x4, 0xC,
                                           0x2, 0xA, 0x6, 0xE, 0x1, 0x9, 0x5, 0xD, 0x3, 0xB,
                                           0x7, 0xF);
  const __m256i low = _mm256_set1_epi8(0x0F);
  x = _mm256_shuffle_epi8(x, bytes);
  __m256i lo = _mm256_shuffle_epi8(nibbles, _mm256_and_si256(x, low));
  __m256i hi = _mm256_shuffle_epi8(nibbles, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  return _mm256_or_si256(_mm256_slli_epi16(lo, 4), hi);  // no byte exceeds 0xF0
}

// dare_norms for one model of dtype D over tiles 4h..4h+3 of a group: 4 elements of
// each tile loaded, the base subtracted in fp32 and transposed to one fp64 lane per
// tile (as gram_inputs_m), each lane's element drawn from its own counter; |delta| is
// added to the tile's "before" chain and, and-ed with its keep mask, to its "after"
// chain: +0 where dropped, what l1_sums adds over the sparsified copy. One model at a
// time: a draw takes longer than an add's latency, so two chains keep the adder fed,
// and the chains stay in registers. A word's keep decisions shift in from the bottom
// (first element ends up on top) and are reversed once per 64 elements.
template <DType D>
void dare_norms_half(const DareNormModel& model, const float* base, uint64_t elem, int h,
                     double* before_sums, double* after_sums) {
  const __m256d magnitude = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  const __m256i golden = _mm256_set1_epi64x(static_cast<long long>(kGolden));
  const __m256i test = avx2::dare_test4(model.density);
  const auto* src = static_cast<const uint8_t*>(model.src);
  constexpr size_t item = D == DType::kF32 ? 4 : 2;
  const uint64_t first = 4 * static_cast<uint64_t>(h) * kTile;  // the half's first element
  // Lane t: the counter of element 0 of tile 4h + t.
  __m256i counter = _mm256_add_epi64(
      _mm256_set1_epi64x(static_cast<long long>(model.stream + (elem + first + 1) * kGolden)),
      _mm256_setr_epi64x(0, static_cast<long long>(kTile * kGolden),
                         static_cast<long long>(2 * kTile * kGolden),
                         static_cast<long long>(3 * kTile * kGolden)));
  __m256d before = _mm256_setzero_pd(), after = _mm256_setzero_pd();
  for (size_t word = 0; word < kTile; word += 64) {
    __m256i reversed = _mm256_setzero_si256();
    for (size_t i = word; i < word + 64; i += 4) {
      __m128 r[4];
      for (int t = 0; t < 4; ++t)
        r[t] = _mm_sub_ps(load4(D, src + (first + t * kTile + i) * item),
                          _mm_loadu_ps(base + first + t * kTile + i));
      _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
      for (int j = 0; j < 4; ++j) {
        __m256d a = _mm256_and_pd(_mm256_cvtps_pd(r[j]), magnitude);
        __m256i kept = avx2::dare_kept4(counter, test);
        before = _mm256_add_pd(before, a);
        after = _mm256_add_pd(after, _mm256_and_pd(a, _mm256_castsi256_pd(kept)));
        reversed = _mm256_sub_epi64(_mm256_add_epi64(reversed, reversed), kept);
        counter = _mm256_add_epi64(counter, golden);
      }
    }
    if (model.keep) {
      alignas(32) uint64_t words[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(words), reverse_bits64(reversed));
      for (int t = 0; t < 4; ++t) model.keep[(4 * h + t) * (kTile / 64) + word / 64] |= words[t];
    }
  }
  _mm256_storeu_pd(before_sums + 4 * h, before);
  _mm256_storeu_pd(after_sums + 4 * h, after);
}

bool dare_norms_avx2(const DareNormModel* models, size_t m, const float* base, uint64_t elem,
                     double* sums) {
  for (size_t k = 0; k < m; ++k)
    if (!avx2::loads8(models[k].dtype)) return false;
  for (size_t k = 0; k < m; ++k) {
    for (int h = 0; h < 2; ++h) {
      double* before = sums + 2 * k * kGramTiles;
      double* after = sums + (2 * k + 1) * kGramTiles;
      switch (models[k].dtype) {
        case DType::kBF16:
          dare_norms_half<DType::kBF16>(models[k], base, elem, h, before, after);
          break;
        case DType::kF16:
          dare_norms_half<DType::kF16>(models[k], base, elem, h, before, after);
          break;
        default:
          dare_norms_half<DType::kF32>(models[k], base, elem, h, before, after);
      }
    }
  }
  return true;
}

const MethodKernels kAvx2{"avx2",             delta_avx2,          histogram_hi_avx2,
                          histogram_lo_avx2,  count_equal_avx2,    window_scan_avx2,
                          sparsify_random_avx2,
                          sparsify_kept_avx2, sparsify_rank_avx2,  scale_avx2,
                          l1_sums_avx2,       mix_avx2,            gram_avx2,
                          task_tile_avx2,     dare_norms_avx2,     gram_inputs_avx2,
                          sparsify_prob_avx2, sce_variance_avx2,   rank_keep_avx2,
                          sce_mix_avx2};

}  // namespace

const MethodKernels* avx2_method_kernels() { return &kAvx2; }

}  // namespace ladle
