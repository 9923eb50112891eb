#include "dtype.h"

namespace ladle {
namespace {

struct DTypeInfo {
  const char* name;
  int bits;
  bool mergeable;
};

constexpr DTypeInfo kTable[] = {
    {"BOOL", 8, false},        {"U8", 8, false},          {"I8", 8, false},
    {"I16", 16, false},        {"U16", 16, false},        {"I32", 32, false},
    {"U32", 32, false},        {"I64", 64, false},        {"U64", 64, false},
    {"F16", 16, true},         {"BF16", 16, true},        {"F32", 32, true},
    {"F64", 64, true},         {"C64", 64, false},        {"F8_E4M3", 8, true},
    {"F8_E5M2", 8, true},     {"F8_E4M3FNUZ", 8, false}, {"F8_E5M2FNUZ", 8, false},
    {"F8_E8M0", 8, false},     {"F4", 4, false},          {"F6_E2M3", 6, false},
    {"F6_E3M2", 6, false},
};
static_assert(sizeof(kTable) / sizeof(kTable[0]) == static_cast<size_t>(DType::kCount),
              "dtype table out of sync with enum");

}  // namespace

bool parse_dtype(const std::string& name, DType* out) {
  for (size_t i = 0; i < static_cast<size_t>(DType::kCount); ++i) {
    if (name == kTable[i].name) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

const char* dtype_name(DType dtype) { return kTable[static_cast<size_t>(dtype)].name; }
int dtype_bits(DType dtype) { return kTable[static_cast<size_t>(dtype)].bits; }
bool dtype_is_mergeable(DType dtype) { return kTable[static_cast<size_t>(dtype)].mergeable; }
bool dtype_is_integer(DType dtype) { return dtype <= DType::kU64; }

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (man << 13));  // Inf/NaN
  if (exp == 0) {
    if (man == 0) return f32_from_bits(sign);
    // Subnormal: value = man * 2^-24, exact in fp32.
    float v = static_cast<float>(man) * f32_from_bits(0x33800000u);
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t u = bits_from_f32(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return 0x7E00;                  // canonical quiet NaN
  if (abs >= 0x477FF000u) return sign | 0x7C00;           // rounds to >= 65520: Inf
  if (abs < 0x38800000u) {                                // below 2^-14: f16 subnormal
    if (abs < 0x33000000u) return sign;                   // below half of 2^-24: zero
    uint32_t exp = abs >> 23;
    uint32_t man = (abs & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - exp;                           // 14..24 bits dropped (+ 1)
    uint32_t kept = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (kept & 1u))) ++kept;
    return sign | static_cast<uint16_t>(kept);
  }
  // Normal: rebias exponent, round 13 dropped mantissa bits to nearest even.
  uint32_t r = abs - 0x38000000u;
  r += 0xFFFu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

// fp8 encoders: the steps of c10's Float8_e4m3fn / Float8_e5m2 fp32 casts, so
// ladle and torch (2.14) agree on every non-NaN fp32 value (tests/test_fp8.py);
// like torch, E4M3 saturates: |x| > 448 (Inf included) gives ±448. NaN gives
// the positive NaN code 0x7F (torch keeps the NaN's sign; ladle's NaNs are
// canonical in every dtype).
uint8_t f32_to_f8_e4m3(float f) {
  uint32_t bits = bits_from_f32(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7F;
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t result;
  if (bits > 0x43E00000u) {  // |f| > 448 (Inf included): saturate, e4m3fn has no Inf
    result = 0x7E;
  } else if (bits < (121u << 23)) {  // below 2^-6: subnormal, rounded by an fp32 add
    const uint32_t denorm_mask = 141u << 23;
    bits = bits_from_f32(f32_from_bits(bits) + f32_from_bits(denorm_mask));
    result = static_cast<uint8_t>(bits - denorm_mask);
  } else {
    uint32_t mant_odd = (bits >> 20) & 1u;
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + mant_odd;
    result = static_cast<uint8_t>(bits >> 20);
  }
  return static_cast<uint8_t>(result | (sign >> 24));
}

uint8_t f32_to_f8_e5m2(float f) {
  uint32_t bits = bits_from_f32(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7F;
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t result;
  if (bits >= (143u << 23)) {  // |f| >= 65536: Inf
    result = 0x7C;
  } else if (bits < (113u << 23)) {  // below 2^-14: subnormal
    const uint32_t denorm_mask = 134u << 23;
    bits = bits_from_f32(f32_from_bits(bits) + f32_from_bits(denorm_mask));
    result = static_cast<uint8_t>(bits - denorm_mask);
  } else {
    uint32_t mant_odd = (bits >> 21) & 1u;
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFFFu + mant_odd;
    result = static_cast<uint8_t>(bits >> 21);
  }
  return static_cast<uint8_t>(result | (sign >> 24));
}

float f8_e4m3_to_f32(uint8_t b) {
  uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  uint32_t exp = (b >> 3) & 0xFu;
  uint32_t man = b & 0x7u;
  if (exp == 0xF && man == 0x7) return f32_from_bits(sign | 0x7FC00000u);  // the only NaN
  if (exp == 0) {  // subnormal: man * 2^-9, exact in fp32
    float v = static_cast<float>(man) * f32_from_bits(0x3B000000u);
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exp + 120) << 23) | (man << 20));
}

}  // namespace ladle
