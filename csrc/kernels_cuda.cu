// CUDA weighted-sum kernel: one launch computes N-input weighted sums (or nearswaps)
// of every tensor in a descriptor table (see kernels_cuda.h). Each thread owns 16
// elements of a 4096-element tile (layout below) and walks tiles grid-stride; the
// per-thread code is __host__ __device__ so emulate_weighted_sum() runs it on
// the CPU for tests. Conversions are written on bits, copying csrc/dtype.h, so
// NaN handling and rounding match the CPU path exactly; products and sums use
// __fmul_rn/__fadd_rn, which the compiler never contracts into FMA.
#include <cuda_runtime.h>

#include <cstring>

#include "dtype.h"
#include "cuda_elems.cuh"
#include "kernels_cuda.h"

namespace ladle {
namespace cuda {
namespace {

using namespace elems;  // NOLINT: the shared per-element code

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

// kAccumulateF64 tensors: fp64 products and sums in input order, one element per
// step, stored as the host's store_f64 does.
LADLE_HD void run_f64_tile(const LaunchArgs& args, const TensorDesc& t, uint64_t tile_e0,
                           uint32_t lane, float post_scale) {
  for (uint64_t e = tile_e0 + lane; e < t.n_elems && e < tile_e0 + kTileElems;
       e += kBlockThreads) {
    double acc = 0.0;
    bool first = true;
    for (uint32_t k = 0; k < t.n_inputs; ++k) {
      const double w = args.arg_weights64[k];
      if (w == 0.0) continue;
      const InputDesc& in = args.inputs[t.first_input + k];
      const double x = in.dtype == kF64 ? static_cast<const double*>(in.ptr)[e]
                                        : static_cast<double>(load_one(in.dtype, in.ptr, e));
      acc = first ? dmul_rn(w, x) : dadd_rn(acc, dmul_rn(w, x));
      first = false;
    }
    if (post_scale != 1.0f) acc = dmul_rn(acc, static_cast<double>(post_scale));
    if (t.out_dtype == kF64) {
      uint64_t bits = 0x7FF8000000000000ull;  // canonical NaN, as f64_canonical_bits
      if (acc == acc) {
#ifdef __CUDA_ARCH__
        bits = static_cast<uint64_t>(__double_as_longlong(acc));
#else
        std::memcpy(&bits, &acc, 8);
#endif
      }
      static_cast<uint64_t*>(t.out)[e] = bits;
    } else {
      store_one(t.out_dtype, t.out, e, static_cast<float>(acc));  // RNE to fp32 first
    }
  }
}

// kNearSwapOp tensors: both inputs loaded as a weighted sum's are, then the
// per-element nearswap (t in post_scale).
template <int kSeg>
LADLE_HD void run_near_swap_full_tile(const LaunchArgs& args, const TensorDesc& t,
                                      uint64_t tile_e0, uint32_t lane) {
  const InputDesc& a = args.inputs[t.first_input];
  const InputDesc& b = args.inputs[t.first_input + 1];
  float x[kPackElems], y[kPackElems];
  load_segments<kSeg>(a.dtype, a.ptr, tile_e0, lane, x);
  load_segments<kSeg>(b.dtype, b.ptr, tile_e0, lane, y);
#pragma unroll
  for (int j = 0; j < kPackElems; ++j) x[j] = near_swap_one(x[j], y[j], t.post_scale);
  store_segments<kSeg>(t.out_dtype, t.out, tile_e0, lane, x);
}

LADLE_HD void run_near_swap_partial_tile(const LaunchArgs& args, const TensorDesc& t,
                                         uint64_t tile_e0, uint32_t lane) {
  const InputDesc& a = args.inputs[t.first_input];
  const InputDesc& b = args.inputs[t.first_input + 1];
  for (uint64_t e = tile_e0 + lane; e < t.n_elems && e < tile_e0 + kTileElems;
       e += kBlockThreads)
    store_one(t.out_dtype, t.out, e,
              near_swap_one(load_one(a.dtype, a.ptr, e), load_one(b.dtype, b.ptr, e),
                            t.post_scale));
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
  if (t.flags & kAccumulateF64) return run_f64_tile(args, t, tile_e0, lane, post_scale);
  const bool full = tile_e0 + kTileElems <= t.n_elems;
  if (t.flags & kNearSwapOp) {
    if (!full) return run_near_swap_partial_tile(args, t, tile_e0, lane);
    if (t.vectorized == kVectorized16) return run_near_swap_full_tile<8>(args, t, tile_e0, lane);
    if (t.vectorized == kVectorized) return run_near_swap_full_tile<4>(args, t, tile_e0, lane);
    return run_near_swap_partial_tile(args, t, tile_e0, lane);
  }
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
