// CUDA weighted-sum kernel: one launch computes N-input weighted sums of every
// tensor in a descriptor table (see kernels_cuda.h). Each thread owns 8
// consecutive elements of a 2048-element tile and walks tiles grid-stride; the
// per-thread code is __host__ __device__ so emulate_weighted_sum() runs it on
// the CPU for tests. Conversions are written on bits, copying csrc/dtype.h, so
// NaN handling and rounding match the CPU path exactly; products and sums use
// __fmul_rn/__fadd_rn, which the compiler never contracts into FMA.
#include <cuda_runtime.h>

#include <cstring>

#include "dtype.h"
#include "kernels_cuda.h"

namespace ladle {
namespace cuda {
namespace {

#define LADLE_HD __host__ __device__ __forceinline__

constexpr uint32_t kF16 = static_cast<uint32_t>(DType::kF16);
constexpr uint32_t kBF16 = static_cast<uint32_t>(DType::kBF16);
constexpr uint32_t kF32 = static_cast<uint32_t>(DType::kF32);

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

// 16-byte load/store as four 32-bit words (little-endian element order).
LADLE_HD void load16(const void* p, uint32_t w[4]) {
#ifdef __CUDA_ARCH__
  uint4 v = *static_cast<const uint4*>(p);
  w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
#else
  std::memcpy(w, p, 16);
#endif
}

LADLE_HD void store16(void* p, const uint32_t w[4]) {
#ifdef __CUDA_ARCH__
  *static_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
#else
  std::memcpy(p, w, 16);
#endif
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

LADLE_HD uint32_t f32_canonical(float f) {
  uint32_t u = to_bits(f);
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC00000u : u;
}

// ---- loads and stores of one thread's pack of up to 8 elements ----

// Fills x[0..count) from elements [e0, e0 + count) of `base`; x[count..8) stay 0.
LADLE_HD void load_pack(uint32_t dtype, const void* base, uint64_t e0, uint32_t count, bool vec,
                        float x[kPackElems]) {
  if (dtype == kBF16 || dtype == kF16) {
    const uint16_t* p = static_cast<const uint16_t*>(base) + e0;
    const bool bf = dtype == kBF16;
    if (vec) {
      uint32_t w[4];
      load16(p, w);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        x[2 * j] = bf ? bf16_to_f32(w[j] & 0xFFFFu) : f16_to_f32(w[j] & 0xFFFFu);
        x[2 * j + 1] = bf ? bf16_to_f32(w[j] >> 16) : f16_to_f32(w[j] >> 16);
      }
    } else {
      for (uint32_t j = 0; j < count; ++j) x[j] = bf ? bf16_to_f32(p[j]) : f16_to_f32(p[j]);
    }
  } else if (dtype == kF32) {
    const float* p = static_cast<const float*>(base) + e0;
    if (vec) {
      uint32_t w[4];
      load16(p, w);
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = from_bits(w[j]);
      load16(p + 4, w);
#pragma unroll
      for (int j = 0; j < 4; ++j) x[4 + j] = from_bits(w[j]);
    } else {
      for (uint32_t j = 0; j < count; ++j) x[j] = p[j];
    }
  } else {  // kF64 (never vectorized): round to nearest even like static_cast
    const double* p = static_cast<const double*>(base) + e0;
    for (uint32_t j = 0; j < count; ++j) x[j] = static_cast<float>(p[j]);
  }
}

LADLE_HD void store_pack(uint32_t dtype, void* base, uint64_t e0, uint32_t count, bool vec,
                         const float acc[kPackElems]) {
  if (dtype == kBF16 || dtype == kF16) {
    uint16_t* p = static_cast<uint16_t*>(base) + e0;
    const bool bf = dtype == kBF16;
    if (vec) {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t lo = bf ? f32_to_bf16(acc[2 * j]) : f32_to_f16(acc[2 * j]);
        uint32_t hi = bf ? f32_to_bf16(acc[2 * j + 1]) : f32_to_f16(acc[2 * j + 1]);
        w[j] = lo | (hi << 16);
      }
      store16(p, w);
    } else {
      for (uint32_t j = 0; j < count; ++j)
        p[j] = static_cast<uint16_t>(bf ? f32_to_bf16(acc[j]) : f32_to_f16(acc[j]));
    }
  } else if (dtype == kF32) {
    uint32_t* p = static_cast<uint32_t*>(base) + e0;
    if (vec) {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = f32_canonical(acc[j]);
      store16(p, w);
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = f32_canonical(acc[4 + j]);
      store16(p + 4, w);
    } else {
      for (uint32_t j = 0; j < count; ++j) p[j] = f32_canonical(acc[j]);
    }
  } else {  // kF64: exact widening, NaN as the widened fp32 canonical NaN
    uint64_t* p = static_cast<uint64_t*>(base) + e0;
    for (uint32_t j = 0; j < count; ++j) {
      uint32_t u = to_bits(acc[j]);
      if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        p[j] = 0x7FF8000000000000ull;
      } else {
        double d = static_cast<double>(acc[j]);
        uint64_t bits;
#ifdef __CUDA_ARCH__
        bits = static_cast<uint64_t>(__double_as_longlong(d));
#else
        std::memcpy(&bits, &d, 8);
#endif
        p[j] = bits;
      }
    }
  }
}

// ---- one thread's work in one tile ----

LADLE_HD void run_lane(const LaunchArgs& args, uint64_t tile, uint32_t lane) {
  // The tensor owning this tile: the last one whose first_tile <= tile.
  uint32_t lo = 0, hi = args.n_tensors - 1;
  while (lo < hi) {
    uint32_t mid = (lo + hi + 1) / 2;
    if (args.tensors[mid].first_tile <= tile) lo = mid;
    else hi = mid - 1;
  }
  const TensorDesc& t = args.tensors[lo];
  const uint64_t e0 = (tile - t.first_tile) * kTileElems + static_cast<uint64_t>(lane) * kPackElems;
  if (e0 >= t.n_elems) return;
  const uint64_t left = t.n_elems - e0;
  const uint32_t count = left < kPackElems ? static_cast<uint32_t>(left) : kPackElems;
  const bool vec = t.vectorized != 0 && count == kPackElems;

  float acc[kPackElems];
#pragma unroll
  for (int j = 0; j < kPackElems; ++j) acc[j] = 0.0f;
  const bool arg_weights = args.n_arg_weights > 0;
  bool first = true;
  for (uint32_t k = 0; k < t.n_inputs; ++k) {
    InputDesc in = args.inputs[t.first_input + k];
    if (arg_weights) in.weight = args.arg_weights[k];
    if (in.weight == 0.0f) continue;  // zero weights skip their input entirely
    float x[kPackElems];
#pragma unroll
    for (int j = 0; j < kPackElems; ++j) x[j] = 0.0f;
    load_pack(in.dtype, in.ptr, e0, count, vec, x);
    if (first) {
#pragma unroll
      for (int j = 0; j < kPackElems; ++j) acc[j] = mul_rn(in.weight, x[j]);
    } else {
#pragma unroll
      for (int j = 0; j < kPackElems; ++j) acc[j] = add_rn(acc[j], mul_rn(in.weight, x[j]));
    }
    first = false;
  }
  const float post_scale = arg_weights ? args.arg_post_scale : t.post_scale;
  if (post_scale != 1.0f) {
#pragma unroll
    for (int j = 0; j < kPackElems; ++j) acc[j] = mul_rn(acc[j], post_scale);
  }
  store_pack(t.out_dtype, t.out, e0, count, vec, acc);
}

__global__ void __launch_bounds__(kBlockThreads) weighted_sum_kernel(LaunchArgs args) {
  for (uint64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x)
    run_lane(args, tile, threadIdx.x);
}

}  // namespace

int launch_weighted_sum(const LaunchArgs& args, void* stream, int sm_count) {
  if (args.n_tiles == 0 || args.n_tensors == 0) return 0;
  // 8 resident blocks of 256 threads fill an SM (2048 threads); more blocks only
  // add scheduling, fewer leave bandwidth unused.
  uint64_t max_blocks = static_cast<uint64_t>(sm_count > 0 ? sm_count : 1) * 8;
  unsigned blocks = static_cast<unsigned>(args.n_tiles < max_blocks ? args.n_tiles : max_blocks);
  weighted_sum_kernel<<<blocks, kBlockThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
  return static_cast<int>(cudaGetLastError());
}

void emulate_weighted_sum(const LaunchArgs& args) {
  for (uint64_t tile = 0; tile < args.n_tiles; ++tile)
    for (uint32_t lane = 0; lane < static_cast<uint32_t>(kBlockThreads); ++lane)
      run_lane(args, tile, lane);
}

const char* compiled_archs() { return LADLE_CUDA_ARCHS; }

}  // namespace cuda
}  // namespace ladle
