// The safetensors dtype table and the scalar fp32 conversions that define
// ladle's rounding contract (round-to-nearest-even, canonical quiet NaN).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace ladle {

enum class DType : uint8_t {
  kBool, kU8, kI8, kI16, kU16, kI32, kU32, kI64, kU64,
  kF16, kBF16, kF32, kF64, kC64,
  kF8_E4M3, kF8_E5M2, kF8_E4M3FNUZ, kF8_E5M2FNUZ, kF8_E8M0,
  kF4, kF6_E2M3, kF6_E3M2,
  kCount
};

// Parses a safetensors dtype string; returns false when unknown.
bool parse_dtype(const std::string& name, DType* out);
const char* dtype_name(DType dtype);
// Size in bits of one element (sub-byte types: 4 or 6).
int dtype_bits(DType dtype);
// True for the dtypes the engine combines arithmetically (F16, BF16, F32, F64,
// F8_E4M3 (the "fn" variant: no Inf, NaN = S.1111.111) and F8_E5M2).
bool dtype_is_mergeable(DType dtype);
// True for the integer dtypes and BOOL (an elementwise max is defined on them).
bool dtype_is_integer(DType dtype);

inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t bits_from_f32(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = bits_from_f32(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // canonical quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);                     // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// fp8: round-to-nearest-even like torch's casts. E4M3 has no Inf: |x| > 448
// (Inf included) saturates to ±448; E5M2 overflows to ±Inf from 61440 (the tie
// above 57344, which rounds to the even code, Inf). NaN becomes 0x7F in both.
uint8_t f32_to_f8_e4m3(float f);
uint8_t f32_to_f8_e5m2(float f);
float f8_e4m3_to_f32(uint8_t b);
inline float f8_e5m2_to_f32(uint8_t b) { return f16_to_f32(static_cast<uint16_t>(b) << 8); }

// fp64 jobs (an F64 input or output) accumulate in fp64; the result is
// rounded to the output dtype through fp32 when it is narrower.
inline uint64_t f64_canonical_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return (d != d) ? 0x7FF8000000000000ull : u;
}

inline uint32_t f32_canonical_bits(float f) {
  uint32_t u = bits_from_f32(f);
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC00000u : u;
}

inline double f32_to_f64(float f) {
  return (f != f) ? f32_from_bits(0x7FC00000u) : static_cast<double>(f);
}

}  // namespace ladle
