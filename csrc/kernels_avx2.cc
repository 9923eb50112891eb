// AVX2 + F16C kernels, compiled with -mavx2 -mf16c for this file only and
// called only after a run-time CPU check. Bit-identical to the scalar kernels:
// the same fp32 multiply and add per element, no FMA.
#include <immintrin.h>

#include <algorithm>

#include "common.h"
#include "kernels.h"

namespace ladle {
namespace {

inline __m256 load8_f32(const float* p) { return _mm256_loadu_ps(p); }

inline __m256 load8_bf16(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// FP8 -> fp32 through a 256-entry table filled from the scalar conversions (so
// the vector path is bit-identical to them by construction), gathered 8 at a time.
struct F8Table {
  float e4m3[256];
  float e5m2[256];
  F8Table() {
    for (int b = 0; b < 256; ++b) {
      e4m3[b] = f8_e4m3_to_f32(static_cast<uint8_t>(b));
      e5m2[b] = f8_e5m2_to_f32(static_cast<uint8_t>(b));
    }
  }
};
const F8Table kF8Table;

inline __m256 load8_f8(const float* table, const uint8_t* p) {
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(bytes), 4);
}

template <typename Load8, typename Load1>
void accumulate_vec(Load8 load8, Load1 load1, float weight, float* acc, size_t n, bool first) {
  const __m256 w = _mm256_set1_ps(weight);
  size_t i = 0;
  if (first) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_mul_ps(w, load8(i)));
    for (; i < n; ++i) acc[i] = weight * load1(i);
  } else {
    for (; i + 8 <= n; i += 8) {
      __m256 product = _mm256_mul_ps(w, load8(i));
      _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), product));
    }
    for (; i < n; ++i) {
      float product = weight * load1(i);
      acc[i] = acc[i] + product;
    }
  }
}

void accumulate_avx2(DType dtype, const void* src, float weight, float* acc, size_t n,
                     bool first) {
  switch (dtype) {
    case DType::kF32: {
      auto* p = static_cast<const float*>(src);
      return accumulate_vec([p](size_t i) { return load8_f32(p + i); },
                            [p](size_t i) { return p[i]; }, weight, acc, n, first);
    }
    case DType::kBF16: {
      auto* p = static_cast<const uint16_t*>(src);
      return accumulate_vec([p](size_t i) { return load8_bf16(p + i); },
                            [p](size_t i) { return bf16_to_f32(p[i]); }, weight, acc, n, first);
    }
    case DType::kF16: {
      auto* p = static_cast<const uint16_t*>(src);
      return accumulate_vec([p](size_t i) { return load8_f16(p + i); },
                            [p](size_t i) { return f16_to_f32(p[i]); }, weight, acc, n, first);
    }
    case DType::kF8_E4M3:
    case DType::kF8_E5M2: {
      auto* p = static_cast<const uint8_t*>(src);
      const float* table = dtype == DType::kF8_E4M3 ? kF8Table.e4m3 : kF8Table.e5m2;
      return accumulate_vec([p, table](size_t i) { return load8_f8(table, p + i); },
                            [p, table](size_t i) { return table[p[i]]; }, weight, acc, n, first);
    }
    default:
      return scalar_kernels().accumulate(dtype, src, weight, acc, n, first);
  }
}

// Loads 8 accumulator lanes, applies the scale and replaces NaN lanes with the
// fp32 canonical quiet NaN, which every narrower format rounds to its own.
inline __m256 load8_canonical(const float* acc, float scale) {
  __m256 v = _mm256_loadu_ps(acc);
  if (scale != 1.0f) v = _mm256_mul_ps(v, _mm256_set1_ps(scale));
  __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), is_nan);
}

inline __m128i f32x8_to_bf16x8(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
  __m256i hi = _mm256_srli_epi32(rounded, 16);
  __m256i packed = _mm256_packus_epi32(hi, hi);  // per 128-bit lane
  packed = _mm256_permute4x64_epi64(packed, 0x08);
  return _mm256_castsi256_si128(packed);
}

void store_avx2(DType dtype, const float* acc, float scale, void* dst, size_t n) {
  size_t i = 0;
  switch (dtype) {
    case DType::kF32: {
      auto* p = static_cast<float*>(dst);
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, load8_canonical(acc + i, scale));
      break;
    }
    case DType::kBF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i),
                         f32x8_to_bf16x8(load8_canonical(acc + i, scale)));
      break;
    }
    case DType::kF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i),
                         _mm256_cvtps_ph(load8_canonical(acc + i, scale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    }
    default:
      break;
  }
  // Tail (and dtypes without a vector path) through the scalar reference.
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  scalar_kernels().store(dtype, acc + i, scale, static_cast<uint8_t*>(dst) + i * item, n - i);
}

float amax_avx2(const float* x, size_t n, float init) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_set1_ps(init);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  float lanes[8];
  _mm256_storeu_ps(lanes, m);
  for (float v : lanes) init = std::max(init, v);
  return scalar_kernels().amax(x + i, n - i, init);
}

// f32_to_f8_e4m3 (dtype.cc) on 8 lanes, step for step: saturation above 448,
// subnormals rounded by an fp32 add, normals by adding the rounding bias.
inline __m256i f32x8_to_e4m3x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i sign = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256i a = _mm256_xor_si256(u, sign);
  const __m256i denorm_mask = _mm256_set1_epi32(141 << 23);
  __m256i denorm = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(denorm_mask))),
      denorm_mask);
  __m256i mant_odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
  __m256i normal = _mm256_add_epi32(
      a, _mm256_set1_epi32(static_cast<int>((static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu)));
  normal = _mm256_srli_epi32(_mm256_add_epi32(normal, mant_odd), 20);
  __m256i is_denorm = _mm256_cmpgt_epi32(_mm256_set1_epi32(121 << 23), a);
  __m256i r = _mm256_blendv_epi8(normal, denorm, is_denorm);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7E), _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x43E00000)));
  r = _mm256_and_si256(r, _mm256_set1_epi32(0xFF));
  r = _mm256_or_si256(r, _mm256_srli_epi32(sign, 24));
  __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7F), is_nan);
}

void quantize_e4m3_avx2(const float* x, float scale, uint8_t* q, size_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i r = f32x8_to_e4m3x8(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(r, r), _mm256_setzero_si256());
    p = _mm256_permutevar8x32_epi32(p, gather);  // bytes 0-3 of each 128-bit lane
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm256_castsi256_si128(p));
  }
  scalar_kernels().quantize_e4m3(x + i, scale, q + i, n - i);
}

const KernelSet kAvx2{"avx2", accumulate_avx2, store_avx2, amax_avx2, quantize_e4m3_avx2};

}  // namespace

const KernelSet* avx2_kernels() { return &kAvx2; }

}  // namespace ladle
