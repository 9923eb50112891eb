// Inline AVX2 + F16C building blocks of the method kernels (method_kernels_avx2.cc,
// task_tile_avx2.cc): include only from files compiled with -mavx2 -mf16c. Each
// helper gives every lane the scalar reference's operations in its order, no FMA.
#pragma once

#include <immintrin.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "method_kernels.h"

namespace ladle {
namespace avx2 {

// Elements i..i+7 of `src` as fp32 (F32, BF16, F16; the caller routes other dtypes to
// the scalar code).
inline __m256 load8(DType dtype, const void* src, size_t i) {
  switch (dtype) {
    case DType::kBF16: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
          static_cast<const uint16_t*>(src) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
          static_cast<const uint16_t*>(src) + i)));
    default:
      return _mm256_loadu_ps(static_cast<const float*>(src) + i);
  }
}

inline bool loads8(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

inline __m256i abs_bits8(__m256 v) {
  return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
}

// a * c mod 2^64 per 64-bit lane, for a constant c given as its halves (c_lo, c_hi:
// in the low half of every lane). AVX2 multiplies only 32x32->64; a's high half moves
// down by a shuffle (port 5) rather than a shift, which would compete with them.
inline __m256i mul64(__m256i a, __m256i c_lo, __m256i c_hi) {
  __m256i a_hi = _mm256_shuffle_epi32(a, 0xF5);
  __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(a, c_hi), _mm256_mul_epu32(a_hi, c_lo));
  return _mm256_add_epi64(_mm256_mul_epu32(a, c_lo), _mm256_slli_epi64(cross, 32));
}

inline __m256i halves_of(uint64_t c, bool high) {
  return _mm256_set1_epi64x(static_cast<long long>(high ? c >> 32 : c & 0xFFFFFFFFu));
}

// Per 64-bit lane, a word whose high 32 bits are mix64(counter)'s (its low half is
// not): the last xor-shift leaves bits 33..63 as they are, and the second product's
// high half needs only the low halves of its cross terms, added without a carry out
// of the low half (a 32-bit add).
inline __m256i draw_high4(__m256i z) {
  constexpr uint64_t kMul1 = 0xBF58476D1CE4E5B9ull, kMul2 = 0x94D049BB133111EBull;
  z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
  z = mul64(z, halves_of(kMul1, false), halves_of(kMul1, true));
  z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
  __m256i z_hi = _mm256_shuffle_epi32(z, 0xF5);
  __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(z, halves_of(kMul2, true)),
                                   _mm256_mul_epu32(z_hi, halves_of(kMul2, false)));
  return _mm256_add_epi32(_mm256_mul_epu32(z, halves_of(kMul2, false)),
                          _mm256_shuffle_epi32(cross, 0xA0));  // low halves up
}

// DARE's keep test for 4 counters at a time: T = ceil(density * 2^24) (dare_limit) in
// every 64-bit lane, 2^24 when every element is kept.
inline __m256i dare_test4(float density) {
  DareLimit limit = dare_limit(density);
  return _mm256_set1_epi64x(limit.all ? 1ll << 24 : static_cast<long long>(limit.below >> 40));
}

// All-ones 64-bit lanes where the element of each counter lane is kept: its draw
// (the word's bits 40..63: its unknown low half shifts out) below T, a signed
// compare of two non-negative 64-bit values.
inline __m256i dare_kept4(__m256i counter, __m256i test) {
  return _mm256_cmpgt_epi64(test, _mm256_srli_epi64(draw_high4(counter), 40));
}

// The counters of DARE's draws of elements e, e+2, e+4, e+6 of `stream`:
// stream + (e + 2j + 1) * golden in lane j. Adding golden gives e+1, e+3, ...
inline __m256i dare_even_counters(uint64_t stream, uint64_t e) {
  uint64_t first = stream + (e + 1) * kGolden;
  return _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(first)),
                          _mm256_setr_epi64x(0, static_cast<long long>(2 * kGolden),
                                             static_cast<long long>(4 * kGolden),
                                             static_cast<long long>(6 * kGolden)));
}

// Keep lanes (all-ones fp32 lanes) of 8 consecutive elements from their even
// counters (dare_even_counters): the odd elements' 64-bit masks go to the odd 32-bit
// lanes, the even ones' stay in the even lanes (each mask's halves are equal).
inline __m256 dare_kept8(__m256i even, __m256i test) {
  __m256i odd = _mm256_add_epi64(even, _mm256_set1_epi64x(static_cast<long long>(kGolden)));
  return _mm256_castsi256_ps(
      _mm256_blend_epi32(dare_kept4(even, test), dare_kept4(odd, test), 0xAA));
}

// Lanes of a DARE keep-bit byte (bit j: element j kept) as all-ones lanes.
inline __m256 kept_lanes8(int bits) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256i set = _mm256_and_si256(_mm256_set1_epi32(bits), lane_bit);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
}

// A rank bound's lane tests, made once per tile so that below8 takes no branch on
// all/none: bits > gt is below (gt -1: all; 0x7FFFFFFF: none), bits == eq is a tie
// (eq -1 when all or none: never, as bits >= 0).
struct BoundLanes {
  __m256i gt, eq;
};
inline BoundLanes bound_lanes(const RankWindowBound& b) {
  const __m256i never = _mm256_set1_epi32(-1);
  if (b.all) return {never, never};
  if (b.none) return {_mm256_set1_epi32(0x7FFFFFFF), never};
  const __m256i t = _mm256_set1_epi32(static_cast<int>(b.threshold));
  return {t, t};
}

// Lanes of `bits` below the bound `b` (its lanes: `t`), ties resolved lane by lane in
// index order.
inline __m256i below8(RankWindowBound* b, const BoundLanes& t, __m256i bits) {
  __m256i gt = _mm256_cmpgt_epi32(bits, t.gt);  // both <= 0x7FFFFFFF: signed compare is exact
  int eq = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, t.eq)));
  if (eq == 0) return gt;
  alignas(32) int32_t tie[8] = {0};
  for (int j = 0; j < 8; ++j)
    if (eq >> j & 1) tie[j] = b->ties_seen++ < b->ties_keep ? -1 : 0;
  return _mm256_or_si256(gt, _mm256_load_si256(reinterpret_cast<const __m256i*>(tie)));
}

// base + the docs/methods.md mix of 8 elements' weighted deltas v[0..n_models).
// Always inlined: out of line (as GCC chose), the lanes went through memory and a
// compile-time model count could not unroll its loops.
__attribute__((always_inline)) inline __m256 mix8(const MixSpec& spec, const __m256* v,
                                                  size_t n_models, __m256 base) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 sum = zero, divisor = _mm256_set1_ps(spec.plain_divisor);
  if (spec.consensus == MixConsensus::kNone) {
    for (size_t k = 0; k < n_models; ++k) sum = _mm256_add_ps(sum, v[k]);
  } else {
    __m256 positive;  // majority +1 lanes
    if (spec.consensus == MixConsensus::kSum) {
      __m256 total = zero;
      for (size_t k = 0; k < n_models; ++k) total = _mm256_add_ps(total, v[k]);
      positive = _mm256_cmp_ps(total, zero, _CMP_GE_OQ);
    } else {
      __m256i count = _mm256_setzero_si256();
      for (size_t k = 0; k < n_models; ++k) {
        count = _mm256_sub_epi32(count, _mm256_castps_si256(_mm256_cmp_ps(v[k], zero, _CMP_GT_OQ)));
        count = _mm256_add_epi32(count, _mm256_castps_si256(_mm256_cmp_ps(v[k], zero, _CMP_LT_OQ)));
      }
      positive = _mm256_castsi256_ps(_mm256_cmpgt_epi32(count, _mm256_set1_epi32(-1)));
    }
    // Lanes that do not agree add +0 instead of being skipped: the same bits, since
    // neither sum can be -0 (they start at +0, an exact zero sum is +0, and agreeing
    // deltas are nonzero).
    // A delta agrees when it is > 0 where the majority is +1, < 0 where it is -1: its
    // sign flipped in the -1 lanes, then > 0 (NaN and zeros never agree).
    const __m256 flip = _mm256_andnot_ps(positive, _mm256_set1_ps(-0.0f));
    __m256 weight = zero;
    for (size_t k = 0; k < n_models; ++k) {
      __m256 agree = _mm256_cmp_ps(_mm256_xor_ps(v[k], flip), zero, _CMP_GT_OQ);
      sum = _mm256_add_ps(sum, _mm256_and_ps(v[k], agree));
      weight = _mm256_add_ps(weight, _mm256_and_ps(_mm256_set1_ps(spec.weights[k]), agree));
    }
    divisor = _mm256_blendv_ps(weight, _mm256_set1_ps(1.0f), _mm256_cmp_ps(weight, zero, _CMP_EQ_OQ));
  }
  if (spec.normalize) sum = _mm256_div_ps(sum, divisor);
  if (spec.lambda != 1.0f) sum = _mm256_mul_ps(sum, _mm256_set1_ps(spec.lambda));
  return _mm256_add_ps(base, sum);
}

// Models whose 8 lanes the vector mix keeps on the stack (2 KiB); more take the
// scalar / composed path.
constexpr size_t kFusedModels = 64;

// Lane indices of the set bits of an 8-bit mask, lowest first (then zeros): with
// _mm256_permutevar8x32_epi32 they pack the selected lanes to the front.
struct CompressTable {
  std::array<uint64_t, 256> lanes{};  // byte j: the j-th set bit's lane
  constexpr CompressTable() {
    for (int mask = 0; mask < 256; ++mask) {
      uint64_t packed = 0;
      int j = 0;
      for (int lane = 0; lane < 8; ++lane)
        if (mask >> lane & 1) packed |= static_cast<uint64_t>(lane) << (8 * j++);
      lanes[static_cast<size_t>(mask)] = packed;
    }
  }
};
inline constexpr CompressTable kCompress{};

// Stores the lanes of `v` selected by `mask` contiguously at dst (all 8 lanes are
// written); returns how many were selected.
inline size_t compress_store8(uint32_t* dst, __m256i v, int mask) {
  __m256i idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(
      static_cast<long long>(kCompress.lanes[static_cast<size_t>(mask)])));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, idx));
  return static_cast<size_t>(__builtin_popcount(static_cast<unsigned>(mask)));
}

}  // namespace avx2

// The fused task program (task_tile_avx2.cc).
void task_tile_avx2(TaskTile& tile, const float* base, float* out, size_t n);
// SCE's per-element variance and mix (sce_kernels_avx2.cc).
void sce_variance_avx2(const float* tv, size_t stride, size_t m, size_t n, uint32_t* bits);
void sce_mix_avx2(const float* tv, size_t stride, size_t m, const float* w, const float* base,
                  float* out, size_t n);

}  // namespace ladle
