// Per-element code shared by the CUDA kernels (kernels_cuda.cu, method_kernels_cuda.cu):
// fp32 arithmetic that is never contracted into FMA, and the dtype conversions written
// on bits as in csrc/dtype.{h,cc}, all __host__ __device__ so the emulator runs the
// same code on the CPU. Included only by .cu files (nvcc).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace ladle {
namespace cuda {
namespace elems {

#define LADLE_HD __host__ __device__ __forceinline__

constexpr uint32_t kBF16 = static_cast<uint32_t>(DType::kBF16);
constexpr uint32_t kF32 = static_cast<uint32_t>(DType::kF32);
constexpr uint32_t kF64 = static_cast<uint32_t>(DType::kF64);
constexpr uint32_t kF8E4M3 = static_cast<uint32_t>(DType::kF8_E4M3);
constexpr uint32_t kF8E5M2 = static_cast<uint32_t>(DType::kF8_E5M2);

LADLE_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;  // host: compiled with -ffp-contract=off, SSE arithmetic
#endif
}

LADLE_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LADLE_HD float from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

LADLE_HD uint32_t to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

LADLE_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  // x86 returns the first NaN operand, quieted, and makes a new NaN (Inf - Inf) its
  // "default NaN" 0xFFC00000; the GPU gives a canonical NaN. The |delta| bits rank
  // NaNs, so the CPU's NaNs are kept.
  if (a != a) return from_bits(to_bits(a) | 0x400000u);
  if (b != b) return from_bits(to_bits(b) | 0x400000u);
  float r = __fsub_rn(a, b);
  return r == r ? r : from_bits(0xFFC00000u);
#else
  return a - b;
#endif
}

LADLE_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

LADLE_HD double dmul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

LADLE_HD double dadd_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

LADLE_HD float abs_rn(float x) { return from_bits(to_bits(x) & 0x7FFFFFFFu); }  // as fabs

// mergekit's nearswap of one element (near_swap_tile, method_kernels_cpu.cc): the
// same fp32 operations in the same order. NaN payloads may differ from the CPU's,
// but every output dtype stores NaN canonically.
LADLE_HD float near_swap_one(float a, float b, float t) {
  const float kMinDiff = 1e-6f;
  float diff = abs_rn(sub_rn(a, b));
  float den = diff < kMinDiff ? kMinDiff : diff;  // NaN stays NaN
  float w = mul_rn(div_rn(1.0f, den), t);         // torch: t / x is x.reciprocal() * t
  w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
  return add_rn(mul_rn(w, b), mul_rn(sub_rn(1.0f, w), a));
}

// ---- conversions: bit-for-bit copies of csrc/dtype.{h,cc} ----

LADLE_HD float bf16_to_f32(uint32_t h) { return from_bits(h << 16); }

LADLE_HD float f16_to_f32(uint32_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return from_bits(sign | 0x7F800000u | (man << 13));  // Inf/NaN
  if (exp == 0) {
    if (man == 0) return from_bits(sign);
    float v = mul_rn(static_cast<float>(man), from_bits(0x33800000u));  // man * 2^-24, exact
    return sign ? -v : v;
  }
  return from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

LADLE_HD uint32_t f32_to_bf16(float f) {
  uint32_t u = to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;  // canonical quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);                      // round to nearest even
  return u >> 16;
}

LADLE_HD uint32_t f32_to_f16(float f) {
  uint32_t u = to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return 0x7E00u;          // canonical quiet NaN
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: Inf
  if (abs < 0x38800000u) {                        // below 2^-14: f16 subnormal
    if (abs < 0x33000000u) return sign;           // below half of 2^-24: zero
    uint32_t exp = abs >> 23;
    uint32_t man = (abs & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - exp;
    uint32_t kept = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (kept & 1u))) ++kept;
    return sign | kept;
  }
  uint32_t r = abs - 0x38000000u;
  r += 0xFFFu + ((r >> 13) & 1u);
  return sign | (r >> 13);
}

LADLE_HD float f8_e4m3_to_f32(uint32_t b) {
  uint32_t sign = (b & 0x80u) << 24;
  uint32_t exp = (b >> 3) & 0xFu;
  uint32_t man = b & 0x7u;
  if (exp == 0xF && man == 0x7) return from_bits(sign | 0x7FC00000u);
  if (exp == 0) {
    float v = mul_rn(static_cast<float>(man), from_bits(0x3B000000u));  // man * 2^-9, exact
    return sign ? -v : v;
  }
  return from_bits(sign | ((exp + 120) << 23) | (man << 20));
}

LADLE_HD uint32_t f32_to_f8_e4m3(float f) {
  uint32_t bits = to_bits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7Fu;
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t result;
  if (bits > 0x43E00000u) {  // |f| > 448: saturate
    result = 0x7Eu;
  } else if (bits < (121u << 23)) {
    const uint32_t denorm_mask = 141u << 23;
    bits = to_bits(add_rn(from_bits(bits), from_bits(denorm_mask)));
    result = (bits - denorm_mask) & 0xFFu;
  } else {
    uint32_t mant_odd = (bits >> 20) & 1u;
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + mant_odd;
    result = (bits >> 20) & 0xFFu;
  }
  return result | (sign >> 24);
}

LADLE_HD uint32_t f32_to_f8_e5m2(float f) {
  uint32_t bits = to_bits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7Fu;
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t result;
  if (bits >= (143u << 23)) {
    result = 0x7Cu;
  } else if (bits < (113u << 23)) {
    const uint32_t denorm_mask = 134u << 23;
    bits = to_bits(add_rn(from_bits(bits), from_bits(denorm_mask)));
    result = (bits - denorm_mask) & 0xFFu;
  } else {
    uint32_t mant_odd = (bits >> 21) & 1u;
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFFFu + mant_odd;
    result = (bits >> 21) & 0xFFu;
  }
  return result | (sign >> 24);
}

LADLE_HD uint32_t f32_canonical(float f) {
  uint32_t u = to_bits(f);
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC00000u : u;
}

LADLE_HD float to_f32(uint32_t dtype, uint32_t h16) {
  return dtype == kBF16 ? bf16_to_f32(h16) : f16_to_f32(h16);
}

LADLE_HD uint32_t from_f32(uint32_t dtype, float f) {
  return dtype == kBF16 ? f32_to_bf16(f) : f32_to_f16(f);
}

LADLE_HD float load_one(uint32_t dtype, const void* base, uint64_t e) {
  if (dtype == kF32) return static_cast<const float*>(base)[e];
  if (dtype == kF64) return static_cast<float>(static_cast<const double*>(base)[e]);  // RNE
  if (dtype == kF8E4M3) return f8_e4m3_to_f32(static_cast<const uint8_t*>(base)[e]);
  if (dtype == kF8E5M2) return f16_to_f32(static_cast<uint32_t>(static_cast<const uint8_t*>(base)[e]) << 8);
  return to_f32(dtype, static_cast<const uint16_t*>(base)[e]);
}

LADLE_HD void store_one(uint32_t dtype, void* base, uint64_t e, float v) {
  uint32_t u = to_bits(v);
  if (dtype == kF32) {
    static_cast<uint32_t*>(base)[e] = f32_canonical(v);
  } else if (dtype == kF64) {  // exact widening, NaN as the widened fp32 canonical NaN
    uint64_t bits = 0x7FF8000000000000ull;
    if ((u & 0x7FFFFFFFu) <= 0x7F800000u) {
      double d = static_cast<double>(v);
#ifdef __CUDA_ARCH__
      bits = static_cast<uint64_t>(__double_as_longlong(d));
#else
      std::memcpy(&bits, &d, 8);
#endif
    }
    static_cast<uint64_t*>(base)[e] = bits;
  } else if (dtype == kF8E4M3) {
    static_cast<uint8_t*>(base)[e] = static_cast<uint8_t>(f32_to_f8_e4m3(v));
  } else if (dtype == kF8E5M2) {
    static_cast<uint8_t*>(base)[e] = static_cast<uint8_t>(f32_to_f8_e5m2(v));
  } else {
    static_cast<uint16_t*>(base)[e] = static_cast<uint16_t>(from_f32(dtype, v));
  }
}


}  // namespace elems
}  // namespace cuda
}  // namespace ladle
