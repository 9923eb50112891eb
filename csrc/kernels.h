// Kernel interface: fused convert-and-accumulate of one input tile into an fp32
// accumulator, and rounding of the accumulator to the output dtype. Every
// implementation follows the same arithmetic contract bit for bit:
//   first input:  acc[i] = fp32(w * x[i])
//   later inputs: acc[i] = fp32(acc[i] + fp32(w * x[i]))     (no FMA)
//   store:        out[i] = rne(scale == 1 ? acc[i] : fp32(acc[i] * scale)),
//                 NaN stored as the dtype's canonical quiet NaN.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace ladle {

// kAvx512: the AVX-512 method kernels (method_kernels.h) over the AVX2 weighted sums,
// which already run at the I/O limit.
enum class KernelImpl : uint8_t { kAuto, kScalar, kAvx2, kAvx512 };

struct KernelSet {
  const char* name;
  void (*accumulate)(DType dtype, const void* src, float weight, float* acc, size_t n,
                     bool first);
  void (*store)(DType dtype, const float* acc, float scale, void* dst, size_t n);
  // FP8 requantization (fp8_requant.h), on finite values: the largest of init and
  // |x[i]| (exact in any order), and q[i] = f32_to_f8_e4m3(fp32(x[i] / scale)).
  float (*amax)(const float* x, size_t n, float init);
  void (*quantize_e4m3)(const float* x, float scale, uint8_t* q, size_t n);
};

const KernelSet& scalar_kernels();
// Defined only when the AVX2 translation unit is compiled in.
const KernelSet* avx2_kernels();
bool cpu_supports_avx2();
// AVX-512 F/BW/DQ/VL (with AVX2 and F16C), enabled by the OS.
bool cpu_supports_avx512();
// Picks the kernels; kAuto prefers AVX2 when the CPU has AVX2+F16C+FMA-free
// support. Raises when an explicitly requested implementation is unavailable.
const KernelSet& select_kernels(KernelImpl impl);

// The fp64 path (scalar, shared by every CPU kernel set): a job with an F64
// input or output accumulates acc = w1*x1; acc = acc + wk*xk in fp64, with
// weights rounded to fp64 once (JobInput::weight_f64), no FMA; the store
// rounds to F64 directly, or to fp32 first for narrower outputs.
void accumulate_f64(DType dtype, const void* src, double weight, double* acc, size_t n,
                    bool first);
void store_f64(DType dtype, const double* acc, double scale, void* dst, size_t n);

// Index of the first NaN/Inf among n elements of `src`, or n when all finite.
size_t find_nonfinite(DType dtype, const void* src, size_t n);

}  // namespace ladle
