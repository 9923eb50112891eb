// Interface of the CUDA weighted-sum kernel (csrc/kernels_cuda.cu), free of CUDA
// headers so g++-compiled code can use it. One launch computes every tensor of a
// descriptor table, each out = rne(post_scale * (w1*x1 + w2*x2 + ...)) under the
// arithmetic contract of kernels.h (fp32 accumulation in input order, no FMA,
// zero weights skipped, canonical quiet NaN), bit-identical to the CPU kernels;
// a tensor flagged kNearSwapOp gets mergekit's nearswap of its two inputs instead.
#pragma once

#include <cstdint>

namespace ladle {
namespace cuda {

constexpr int kBlockThreads = 256;  // threads per block
constexpr int kPackElems = 16;      // elements per thread per tile (32 bytes of 16-bit)
constexpr uint64_t kTileElems = static_cast<uint64_t>(kBlockThreads) * kPackElems;
constexpr uint64_t kTableAlign = 256;  // alignment of tables and staged tensors

// One input of one output tensor. `ptr` points at the tensor's element 0 (device
// memory for launches, host memory for the emulator). `dtype` is a ladle::DType.
struct InputDesc {
  const void* ptr;
  float weight;  // 0 skips the input: ptr is then never read
  uint32_t dtype;
};
static_assert(sizeof(InputDesc) == 16, "InputDesc must stay 16 bytes");

// How the kernel loads a tensor's full packs of kPackElems elements.
enum VectorMode : uint32_t {
  kScalarLoads = 0,   // some pointer is not 16-byte aligned, or F64 is involved
  kVectorized = 1,    // 16-byte loads; some input is F32 (four loads per pack)
  kVectorized16 = 2,  // 16-byte loads; every input is 16-bit (two loads per pack)
};

// One output tensor: inputs[first_input .. first_input + n_inputs) of the table.
struct TensorDesc {
  void* out;
  uint64_t n_elems;
  uint64_t first_tile;  // tiles of kTileElems before this tensor (prefix sum)
  uint32_t first_input;
  uint32_t n_inputs;
  float post_scale;   // 1 skips the multiplication; kNearSwapOp: mergekit's t
  uint32_t out_dtype;  // a ladle::DType
  uint32_t vectorized;  // a VectorMode: how full packs may be loaded
  uint32_t flags;       // kAccumulateF64, kNearSwapOp or 0
};
static_assert(sizeof(TensorDesc) == 48, "TensorDesc must stay 48 bytes");

constexpr uint32_t kMaxArgWeights = 32;

// TensorDesc::flags: an F64 input or output. The tensor is then accumulated in
// fp64 as csrc/f64_sum.cc does on the host (acc = w1*x1; acc = acc + wk*xk with
// the fp64 weights arg_weights64, NaN canonical), rounded to a narrower output
// through fp32. Only with weights passed as arguments.
constexpr uint32_t kAccumulateF64 = 1;

// TensorDesc::flags: out = nearswap(x1, x2, t) per element (near_swap_tile in
// method_kernels.h), t in post_scale; the two inputs' weights are not used.
constexpr uint32_t kNearSwapOp = 2;

// What one launch computes. `tensors` is sorted by first_tile, tensors with no
// elements are left out, and n_tiles is the total. When n_arg_weights > 0 the
// weight of every tensor's k-th input is arg_weights[k] and the post scale is
// arg_post_scale (the table's weights and post_scale are ignored): a sweep then
// changes weights without touching device memory.
struct LaunchArgs {
  const TensorDesc* tensors = nullptr;
  const InputDesc* inputs = nullptr;
  uint32_t n_tensors = 0;
  uint64_t n_tiles = 0;
  uint32_t n_arg_weights = 0;
  float arg_post_scale = 1.0f;
  float arg_weights[kMaxArgWeights] = {};
  double arg_weights64[kMaxArgWeights] = {};  // the same weights, for kAccumulateF64
};

// Tiles a tensor of n_elems occupies.
inline uint64_t tiles_for(uint64_t n_elems) { return (n_elems + kTileElems - 1) / kTileElems; }

// Enqueues the kernel on `stream` (a cudaStream_t; 0 is the legacy default
// stream) of the current device; `sm_count` sizes the grid. The tables must be
// in device memory and stay valid until the kernel has run. Returns the
// cudaError_t of the launch (0 on success).
int launch_weighted_sum(const LaunchArgs& args, void* stream, int sm_count);

// Runs the very same per-thread code on the host over host memory, tile by
// tile and lane by lane, so the kernel's logic can be tested without a GPU.
void emulate_weighted_sum(const LaunchArgs& args);

// Architectures the kernels were compiled for, e.g. "sm_80 sm_90 compute_90".
const char* compiled_archs();

}  // namespace cuda
}  // namespace ladle
