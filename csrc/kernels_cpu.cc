// Scalar reference kernels (the contract written out plainly) and dispatch.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "kernels.h"

namespace ladle {
namespace {

template <typename Load>
void accumulate_with(Load load, float weight, float* acc, size_t n, bool first) {
  if (first) {
    for (size_t i = 0; i < n; ++i) acc[i] = weight * load(i);
  } else {
    for (size_t i = 0; i < n; ++i) {
      float product = weight * load(i);
      acc[i] = acc[i] + product;
    }
  }
}

void accumulate_scalar(DType dtype, const void* src, float weight, float* acc, size_t n,
                       bool first) {
  switch (dtype) {
    case DType::kF32: {
      auto* p = static_cast<const float*>(src);
      return accumulate_with([p](size_t i) { return p[i]; }, weight, acc, n, first);
    }
    case DType::kBF16: {
      auto* p = static_cast<const uint16_t*>(src);
      return accumulate_with([p](size_t i) { return bf16_to_f32(p[i]); }, weight, acc, n, first);
    }
    case DType::kF16: {
      auto* p = static_cast<const uint16_t*>(src);
      return accumulate_with([p](size_t i) { return f16_to_f32(p[i]); }, weight, acc, n, first);
    }
    case DType::kF64: {
      auto* p = static_cast<const double*>(src);
      return accumulate_with([p](size_t i) { return static_cast<float>(p[i]); }, weight, acc, n,
                             first);
    }
    case DType::kF8_E4M3: {
      auto* p = static_cast<const uint8_t*>(src);
      return accumulate_with([p](size_t i) { return f8_e4m3_to_f32(p[i]); }, weight, acc, n,
                             first);
    }
    case DType::kF8_E5M2: {
      auto* p = static_cast<const uint8_t*>(src);
      return accumulate_with([p](size_t i) { return f8_e5m2_to_f32(p[i]); }, weight, acc, n,
                             first);
    }
    default:
      raise(ErrorKind::kValue, format("cannot merge dtype %s", dtype_name(dtype)));
  }
}

inline float scaled(const float* acc, size_t i, float scale) {
  return scale == 1.0f ? acc[i] : acc[i] * scale;
}

void store_scalar(DType dtype, const float* acc, float scale, void* dst, size_t n) {
  switch (dtype) {
    case DType::kF32: {
      auto* p = static_cast<uint32_t*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_canonical_bits(scaled(acc, i, scale));
      return;
    }
    case DType::kBF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_to_bf16(scaled(acc, i, scale));
      return;
    }
    case DType::kF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_to_f16(scaled(acc, i, scale));
      return;
    }
    case DType::kF64: {
      auto* p = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_to_f64(scaled(acc, i, scale));
      return;
    }
    case DType::kF8_E4M3: {
      auto* p = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_to_f8_e4m3(scaled(acc, i, scale));
      return;
    }
    case DType::kF8_E5M2: {
      auto* p = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] = f32_to_f8_e5m2(scaled(acc, i, scale));
      return;
    }
    default:
      raise(ErrorKind::kValue, format("cannot write merged values as %s", dtype_name(dtype)));
  }
}

float amax_scalar(const float* x, size_t n, float init) {
  for (size_t i = 0; i < n; ++i) init = std::max(init, std::fabs(x[i]));
  return init;
}

void quantize_e4m3_scalar(const float* x, float scale, uint8_t* q, size_t n) {
  for (size_t i = 0; i < n; ++i) q[i] = f32_to_f8_e4m3(x[i] / scale);
}

const KernelSet kScalar{"scalar", accumulate_scalar, store_scalar, amax_scalar,
                        quantize_e4m3_scalar};

// Any input dtype, exactly in fp64 (every mergeable dtype widens exactly).
double load_f64(DType dtype, const void* src, size_t i) {
  if (dtype == DType::kF64) return static_cast<const double*>(src)[i];
  float x = 0.0f;
  accumulate_scalar(dtype, static_cast<const uint8_t*>(src) + i * (dtype_bits(dtype) / 8), 1.0f,
                    &x, 1, true);
  return static_cast<double>(x);  // 1 * x is exact, NaN stays NaN
}

}  // namespace

void accumulate_f64(DType dtype, const void* src, double weight, double* acc, size_t n,
                    bool first) {
  if (first) {
    for (size_t i = 0; i < n; ++i) acc[i] = weight * load_f64(dtype, src, i);
  } else {
    for (size_t i = 0; i < n; ++i) {
      double product = weight * load_f64(dtype, src, i);
      acc[i] = acc[i] + product;
    }
  }
}

void store_f64(DType dtype, const double* acc, double scale, void* dst, size_t n) {
  if (dtype == DType::kF64) {
    auto* p = static_cast<uint64_t*>(dst);
    for (size_t i = 0; i < n; ++i) p[i] = f64_canonical_bits(scale == 1.0 ? acc[i] : acc[i] * scale);
    return;
  }
  // Narrower outputs: fp64 -> fp32 (nearest even), then the fp32 store.
  float tile[256];
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  for (size_t t = 0; t < n; t += 256) {
    size_t m = std::min<size_t>(256, n - t);
    for (size_t i = 0; i < m; ++i)
      tile[i] = static_cast<float>(scale == 1.0 ? acc[t + i] : acc[t + i] * scale);
    store_scalar(dtype, tile, 1.0f, static_cast<uint8_t*>(dst) + t * item, m);
  }
}

const KernelSet& scalar_kernels() { return kScalar; }

bool cpu_supports_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_supports_avx512() {
#if defined(__x86_64__)
  __builtin_cpu_init();  // libgcc also checks that the OS saves the ZMM and mask state
  return cpu_supports_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

const KernelSet& select_kernels(KernelImpl impl) {
  const KernelSet* avx2 = cpu_supports_avx2() ? avx2_kernels() : nullptr;
  switch (impl) {
    case KernelImpl::kScalar: return kScalar;
    case KernelImpl::kAvx512:
      LADLE_CHECK(avx2 != nullptr && cpu_supports_avx512(), ErrorKind::kValue,
                  "AVX-512 kernels requested but %s",
                  avx2_kernels() ? "this CPU lacks AVX-512 (F, BW, DQ, VL)"
                                 : "they were not compiled in");
      return *avx2;
    case KernelImpl::kAvx2:
      LADLE_CHECK(avx2 != nullptr, ErrorKind::kValue,
                  "AVX2 kernels requested but %s", avx2_kernels() ? "this CPU lacks AVX2/F16C"
                                                                  : "they were not compiled in");
      return *avx2;
    case KernelImpl::kAuto: break;
  }
  return avx2 ? *avx2 : kScalar;
}

size_t find_nonfinite(DType dtype, const void* src, size_t n) {
  switch (dtype) {
    case DType::kF32: {
      auto* p = static_cast<const uint32_t*>(src);
      for (size_t i = 0; i < n; ++i)
        if ((p[i] & 0x7F800000u) == 0x7F800000u) return i;
      return n;
    }
    case DType::kBF16: {
      auto* p = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i)
        if ((p[i] & 0x7F80u) == 0x7F80u) return i;
      return n;
    }
    case DType::kF16: {
      auto* p = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i)
        if ((p[i] & 0x7C00u) == 0x7C00u) return i;
      return n;
    }
    case DType::kF64: {
      auto* p = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(p[i])) return i;
      return n;
    }
    case DType::kF8_E4M3: {  // no Inf; NaN is S.1111.111
      auto* p = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i)
        if ((p[i] & 0x7Fu) == 0x7Fu) return i;
      return n;
    }
    case DType::kF8_E5M2: {
      auto* p = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i)
        if ((p[i] & 0x7Cu) == 0x7Cu) return i;
      return n;
    }
    default:
      return n;
  }
}

}  // namespace ladle

#ifndef LADLE_HAVE_AVX2
namespace ladle {
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace ladle
#endif
