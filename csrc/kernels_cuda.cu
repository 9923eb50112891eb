// CUDA weighted-sum kernel: one launch computes N-input weighted sums of every
// tensor in a descriptor table (see kernels_cuda.h). Each thread owns 16
// elements of a 4096-element tile (layout below) and walks tiles grid-stride; the
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

// 16- and 8-byte loads/stores as 32-bit words (little-endian element order).
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

LADLE_HD void load8(const void* p, uint32_t w[2]) {
#ifdef __CUDA_ARCH__
  uint2 v = *static_cast<const uint2*>(p);
  w[0] = v.x; w[1] = v.y;
#else
  std::memcpy(w, p, 8);
#endif
}

LADLE_HD void store8(void* p, const uint32_t w[2]) {
#ifdef __CUDA_ARCH__
  *static_cast<uint2*>(p) = make_uint2(w[0], w[1]);
#else
  std::memcpy(p, w, 8);
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

// ---- one tile ----
//
// A tile is kTileElems consecutive elements of one tensor; each of its
// kBlockThreads lanes owns kPackElems of them. In a full tile whose pointers
// are 16-byte aligned, a lane's elements are kPackElems / kSeg segments of
// kSeg consecutive elements, segment q of lane l starting at
// q * kBlockThreads * kSeg + l * kSeg: one vector load per segment, and a
// warp's loads of a segment cover consecutive bytes (coalesced). Every
// segment's load is issued before any value is used, so a lane keeps at least
// 32 bytes in flight per input; with 16 it reached only ~77% of copy bandwidth
// on an H100. Other tiles (tails, F64, misaligned) take element
// j * kBlockThreads + l, one element at a time.

// Input k of tensor t, with the launch's weight when the weights are arguments.
LADLE_HD InputDesc input_at(const LaunchArgs& args, const TensorDesc& t, uint32_t k) {
  InputDesc in = args.inputs[t.first_input + k];
  if (args.n_arg_weights > 0) in.weight = args.arg_weights[k];
  return in;
}

LADLE_HD float to_f32(uint32_t dtype, uint32_t h16) {
  return dtype == kBF16 ? bf16_to_f32(h16) : f16_to_f32(h16);
}

LADLE_HD uint32_t from_f32(uint32_t dtype, float f) {
  return dtype == kBF16 ? f32_to_bf16(f) : f32_to_f16(f);
}

// Loads one input's values of a full tile: kSeg = 8 (every input 16-bit, one
// 16-byte load per segment) or kSeg = 4 (fp32 inputs: one 16-byte load;
// 16-bit inputs: one 8-byte load).
template <int kSeg>
LADLE_HD void load_segments(uint32_t dtype, const void* base, uint64_t tile_e0, uint32_t lane,
                            float x[kPackElems]) {
  constexpr int kSegs = kPackElems / kSeg;
  constexpr uint64_t kStride = static_cast<uint64_t>(kBlockThreads) * kSeg;
  const uint64_t e0 = tile_e0 + static_cast<uint64_t>(lane) * kSeg;
  uint32_t w[kSegs][kSeg];  // raw words, all loads issued first
  if (kSeg == 4 && dtype == kF32) {
    const float* p = static_cast<const float*>(base) + e0;
#pragma unroll
    for (int q = 0; q < kSegs; ++q) load16(p + q * kStride, w[q]);
#pragma unroll
    for (int q = 0; q < kSegs; ++q)
#pragma unroll
      for (int j = 0; j < kSeg; ++j) x[q * kSeg + j] = from_bits(w[q][j]);
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(base) + e0;
#pragma unroll
  for (int q = 0; q < kSegs; ++q) {
    if (kSeg == 8) load16(p + q * kStride, w[q]);
    else load8(p + q * kStride, w[q]);
  }
#pragma unroll
  for (int q = 0; q < kSegs; ++q)
#pragma unroll
    for (int j = 0; j < kSeg / 2; ++j) {
      x[q * kSeg + 2 * j] = to_f32(dtype, w[q][j] & 0xFFFFu);
      x[q * kSeg + 2 * j + 1] = to_f32(dtype, w[q][j] >> 16);
    }
}

// Stores a full tile's values in load_segments' layout.
template <int kSeg>
LADLE_HD void store_segments(uint32_t dtype, void* base, uint64_t tile_e0, uint32_t lane,
                             const float acc[kPackElems]) {
  constexpr int kSegs = kPackElems / kSeg;
  constexpr uint64_t kStride = static_cast<uint64_t>(kBlockThreads) * kSeg;
  const uint64_t e0 = tile_e0 + static_cast<uint64_t>(lane) * kSeg;
#pragma unroll
  for (int q = 0; q < kSegs; ++q) {
    const float* a = acc + q * kSeg;
    if (dtype == kF32) {
      uint32_t* p = static_cast<uint32_t*>(base) + e0 + q * kStride;
#pragma unroll
      for (int h = 0; h < kSeg / 4; ++h) {
        uint32_t w[4] = {f32_canonical(a[4 * h]), f32_canonical(a[4 * h + 1]),
                         f32_canonical(a[4 * h + 2]), f32_canonical(a[4 * h + 3])};
        store16(p + 4 * h, w);
      }
    } else {
      uint16_t* p = static_cast<uint16_t*>(base) + e0 + q * kStride;
      uint32_t w[kSeg / 2];
#pragma unroll
      for (int j = 0; j < kSeg / 2; ++j)
        w[j] = from_f32(dtype, a[2 * j]) | (from_f32(dtype, a[2 * j + 1]) << 16);
      if (kSeg == 8) store16(p, w);
      else store8(p, w);
    }
  }
}

LADLE_HD void accumulate(bool first, float weight, const float x[kPackElems],
                         float acc[kPackElems]) {
  if (first) {
#pragma unroll
    for (int j = 0; j < kPackElems; ++j) acc[j] = mul_rn(weight, x[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kPackElems; ++j) acc[j] = add_rn(acc[j], mul_rn(weight, x[j]));
  }
}

LADLE_HD void scale(float post_scale, float* acc, int n) {
  if (post_scale == 1.0f) return;
  for (int j = 0; j < n; ++j) acc[j] = mul_rn(acc[j], post_scale);
}

template <int kSeg>
LADLE_HD void run_full_tile(const LaunchArgs& args, const TensorDesc& t, uint64_t tile_e0,
                            uint32_t lane, float post_scale) {
  float acc[kPackElems];
#pragma unroll
  for (int j = 0; j < kPackElems; ++j) acc[j] = 0.0f;
  bool first = true;
  for (uint32_t k = 0; k < t.n_inputs; ++k) {
    InputDesc in = input_at(args, t, k);
    if (in.weight == 0.0f) continue;  // zero weights skip their input entirely
    float x[kPackElems];
    load_segments<kSeg>(in.dtype, in.ptr, tile_e0, lane, x);
    accumulate(first, in.weight, x, acc);
    first = false;
  }
  scale(post_scale, acc, kPackElems);
  store_segments<kSeg>(t.out_dtype, t.out, tile_e0, lane, acc);
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

LADLE_HD void run_partial_tile(const LaunchArgs& args, const TensorDesc& t, uint64_t tile_e0,
                               uint32_t lane, float post_scale) {
  for (uint64_t e = tile_e0 + lane; e < t.n_elems && e < tile_e0 + kTileElems;
       e += kBlockThreads) {
    float acc = 0.0f;
    bool first = true;
    for (uint32_t k = 0; k < t.n_inputs; ++k) {
      InputDesc in = input_at(args, t, k);
      if (in.weight == 0.0f) continue;
      float x = mul_rn(in.weight, load_one(in.dtype, in.ptr, e));
      acc = first ? x : add_rn(acc, x);
      first = false;
    }
    scale(post_scale, &acc, 1);
    store_one(t.out_dtype, t.out, e, acc);
  }
}

LADLE_HD void run_lane(const LaunchArgs& args, uint64_t tile, uint32_t lane) {
  // The tensor owning this tile: the last one whose first_tile <= tile.
  uint32_t lo = 0, hi = args.n_tensors - 1;
  while (lo < hi) {
    uint32_t mid = (lo + hi + 1) / 2;
    if (args.tensors[mid].first_tile <= tile) lo = mid;
    else hi = mid - 1;
  }
  const TensorDesc& t = args.tensors[lo];
  const uint64_t tile_e0 = (tile - t.first_tile) * kTileElems;
  const float post_scale = args.n_arg_weights > 0 ? args.arg_post_scale : t.post_scale;
  const bool full = tile_e0 + kTileElems <= t.n_elems;
  if (full && t.vectorized == kVectorized16) run_full_tile<8>(args, t, tile_e0, lane, post_scale);
  else if (full && t.vectorized == kVectorized) run_full_tile<4>(args, t, tile_e0, lane, post_scale);
  else run_partial_tile(args, t, tile_e0, lane, post_scale);
}

__global__ void __launch_bounds__(kBlockThreads) weighted_sum_kernel(LaunchArgs args) {
  for (uint64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x)
    run_lane(args, tile, threadIdx.x);
}

}  // namespace

int launch_weighted_sum(const LaunchArgs& args, void* stream, int sm_count) {
  if (args.n_tiles == 0 || args.n_tensors == 0) return 0;
  // 8 blocks of 256 threads per SM cover the most that can be resident; more
  // blocks only add scheduling, and the grid-stride loop takes the rest.
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
