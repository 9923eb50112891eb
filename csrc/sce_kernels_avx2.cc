// AVX2 kernels of SCE (method_kernels.h: sce_variance, sce_mix), compiled with -mavx2
// -mf16c for this file only. Bit-identical to the scalar reference
// (method_sce_elems.h): each lane is one element given the reference's fp64 / fp32
// operations in model order, no FMA; the last partial vector goes through the
// reference.
#include <algorithm>

#include "avx2_lanes.h"
#include "method_sce_elems.h"

namespace ladle {

// The variance's fp64 two-pass of 4 elements per lane group: the mean in model order
// divided by m, then the squared deviations in model order divided by m, rounded to
// fp32 once; its rank bits (every NaN as 0x7FC00000: above every number).
void sce_variance_avx2(const float* tv, size_t stride, size_t m, size_t n, uint32_t* bits) {
  const __m256d count = _mm256_set1_pd(static_cast<double>(m));
  const __m128i magnitude = _mm_set1_epi32(0x7FFFFFFF), inf = _mm_set1_epi32(0x7F800000);
  const __m128i nan = _mm_set1_epi32(0x7FC00000);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    __m256d mean = _mm256_setzero_pd();
    for (size_t k = 0; k < m; ++k)
      mean = _mm256_add_pd(mean, _mm256_cvtps_pd(_mm_loadu_ps(tv + k * stride + i)));
    mean = _mm256_div_pd(mean, count);
    __m256d var = _mm256_setzero_pd();
    for (size_t k = 0; k < m; ++k) {
      __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(tv + k * stride + i)), mean);
      var = _mm256_add_pd(var, _mm256_mul_pd(d, d));
    }
    __m128i u = _mm_and_si128(_mm_castps_si128(_mm256_cvtpd_ps(_mm256_div_pd(var, count))),
                              magnitude);
    u = _mm_blendv_epi8(u, nan, _mm_cmpgt_epi32(u, inf));  // both <= 0x7FFFFFFF
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bits + i), u);
  }
  scalar_method_kernels().sce_variance(tv + i, stride, m, n - i, bits + i);
}

// The erase-and-mix of 8 elements per vector: the majority is +1 where the fp32 sum of
// the deltas (model order) is >= 0; agreeing deltas (sign flipped in the -1 lanes, then
// > 0) add v * w to the sum and w to the divisor, the others add +0 (the same bits:
// neither sum is ever -0); the divisor is at least 1e-6.
void sce_mix_avx2(const float* tv, size_t stride, size_t m, const float* w, const float* base,
                  float* out, size_t n) {
  const __m256 zero = _mm256_setzero_ps(), floor = _mm256_set1_ps(1e-6f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 total = zero;
    for (size_t k = 0; k < m; ++k)
      total = _mm256_add_ps(total, _mm256_loadu_ps(tv + k * stride + i));
    const __m256 flip = _mm256_andnot_ps(_mm256_cmp_ps(total, zero, _CMP_GE_OQ),
                                         _mm256_set1_ps(-0.0f));
    __m256 sum = zero, divisor = zero;
    for (size_t k = 0; k < m; ++k) {
      __m256 v = _mm256_loadu_ps(tv + k * stride + i), weight = _mm256_set1_ps(w[k]);
      __m256 agree = _mm256_cmp_ps(_mm256_xor_ps(v, flip), zero, _CMP_GT_OQ);
      sum = _mm256_add_ps(sum, _mm256_and_ps(_mm256_mul_ps(v, weight), agree));
      divisor = _mm256_add_ps(divisor, _mm256_and_ps(weight, agree));
    }
    divisor = _mm256_blendv_ps(divisor, floor, _mm256_cmp_ps(divisor, floor, _CMP_LT_OQ));
    __m256 mixed = _mm256_div_ps(sum, divisor);
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(base + i), mixed));
  }
  scalar_method_kernels().sce_mix(tv + i, stride, m, w, base + i, out + i, n - i);
}

}  // namespace ladle
