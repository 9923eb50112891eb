// Kernel-only timing of the methods' passes on the GPU, for benchmarks/: inputs and
// statistics already in device memory (no staging, no disk), CUDA events around
// `repeat` launches. The figures are compared with device-to-device copy bandwidth.
#include "method_bench_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "chunk_runner.h"
#include "common.h"
#include "device_ops.h"
#include "kernels.h"
#include "method_kernels.h"
#include "method_kernels_cuda.h"

namespace ladle {
namespace cuda {
namespace {

uint32_t pass_from(const std::string& name) {
  if (name == "hist_hi") return kPassHistHi;
  if (name == "hist_lo") return kPassHistLo;
  if (name == "ties") return kPassTies;
  if (name == "l1") return kPassL1;
  if (name == "apply") return kPassApply;
  if (name == "gram") return kPassGram;
  if (name == "sce_hist_hi") return kPassSceHistHi;
  if (name == "sce_ties") return kPassSceTies;
  if (name == "sce_squares") return kPassSceSquares;
  if (name == "sce_apply") return kPassSceApply;
  if (name == "della_rank") return kPassDellaRank;
  raise(ErrorKind::kValue, format("unknown method pass '%s' (hist_hi, hist_lo, ties, l1, apply, "
                                  "gram, sce_hist_hi, sce_ties, sce_squares, sce_apply, "
                                  "della_rank)",
                                  name.c_str()));
}

// Device memory freed on scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(uint64_t n) { check_cuda(cudaMalloc(&p, std::max<uint64_t>(n, 1)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p); }
};

}  // namespace

PassTiming time_method_pass(int device, const std::string& pass, const std::string& sparsify,
                            uint64_t n_elems, uint32_t n_models, DType dtype, int repeat) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  LADLE_CHECK(n_models >= 1 && n_models <= kMaxTaskModels, ErrorKind::kValue,
              "n_models must be in [1, %u]", kMaxTaskModels);
  uint64_t item = item_n_bytes(dtype), n_bytes = n_elems * item;
  // Base and models: base + small random deltas (varied magnitudes, as fine-tunes).
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> base(n_elems);
  for (float& x : base) x = normal(rng);
  std::vector<std::unique_ptr<DeviceBuffer>> inputs;
  std::vector<uint8_t> host(n_bytes);
  for (uint32_t k = 0; k <= n_models; ++k) {
    std::vector<float> x(base);
    if (k > 0)
      for (float& v : x) v += 0.01f * normal(rng);
    select_kernels(KernelImpl::kAuto).store(dtype, x.data(), 1.0f, host.data(), n_elems);
    inputs.push_back(std::make_unique<DeviceBuffer>(n_bytes));
    check_cuda(cudaMemcpy(inputs.back()->p, host.data(), n_bytes, cudaMemcpyHostToDevice),
               "cudaMemcpy");
  }
  uint64_t n_tiles = (n_elems + kMethodTileElems - 1) / kMethodTileElems;
  MethodLaunch L;
  L.pass = pass_from(pass);
  L.n_elems = n_elems;
  L.n_tiles = n_tiles;
  L.base = inputs[0]->p;
  L.base_dtype = static_cast<uint32_t>(dtype);
  L.sparsify = sparsify == "random" ? kRandomDraw
               : sparsify == "rank"   ? kRankWindow
               : sparsify == "prob"   ? kProbDraw
                                      : kKeepAll;
  L.group_len = std::min<uint64_t>(n_elems, 4096);  // DELLA: rows of 4096
  L.group_stride = 1;
  L.consensus = static_cast<uint32_t>(MixConsensus::kSum);
  L.normalize = 1;
  L.out_dtype = static_cast<uint32_t>(dtype);
  std::vector<ModelDesc> models(n_models);
  for (uint32_t k = 0; k < n_models; ++k) {
    ModelDesc& m = models[k];
    m.ptr = inputs[k + 1]->p;
    m.dtype = static_cast<uint32_t>(dtype);
    m.selects = 1;
    m.density = 0.5f;
    m.floor = 0.35f;
    m.epsilon = 0.15f;
    m.stream = mix64(k + 1);
    // A TIES-like window: keep the top half; the threshold splits a tie run.
    m.sel[0] = SelDesc{};
    m.sel[1].none = 0;
    m.sel[1].active = 1;
    m.sel[1].need_ties = 1;
    m.sel[1].hi_bin = 0x3C23;
    m.sel[1].threshold = 0x3C23D70Au;
    m.sel[1].ties_keep = 1;
  }
  // SCE: a selection whose threshold splits a tie run, as in a real run's apply pass.
  L.select.none = 0;
  L.select.active = 1;
  L.select.need_ties = 1;
  L.select.hi_bin = 0x38D1;
  L.select.threshold = 0x38D1B717u;
  L.select.ties_keep = 1;
  uint64_t n_counts = std::max<uint64_t>(2ull * n_models * kLoHistBins, 2ull * n_models * n_tiles);
  uint64_t n_sums = std::max<uint64_t>(2ull * n_models, n_models * (n_models + 1ull) / 2) * n_tiles;
  DeviceBuffer table(models.size() * sizeof(ModelDesc)), out(n_bytes), counts(n_counts * 8),
      prefix(n_counts * 8), sums(n_sums * 8), probs(n_elems * n_models * 4);
  check_cuda(cudaMemset(probs.p, 0, n_elems * n_models * 4), "cudaMemset");
  L.probs = static_cast<float*>(probs.p);
  check_cuda(cudaMemcpy(table.p, models.data(), models.size() * sizeof(ModelDesc),
                        cudaMemcpyHostToDevice), "cudaMemcpy");
  check_cuda(cudaMemset(prefix.p, 0, n_counts * 8), "cudaMemset");
  check_cuda(cudaMemset(counts.p, 0, n_counts * 8), "cudaMemset");
  L.models = static_cast<const ModelDesc*>(table.p);
  L.n_models = n_models;
  L.out = out.p;
  L.counts = static_cast<unsigned long long*>(counts.p);
  L.tie_prefix = static_cast<const unsigned long long*>(prefix.p);
  L.sums = static_cast<double*>(sums.p);
  check_cuda(launch_method(L, nullptr), "method kernel launch");  // warm-up
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  cudaEvent_t start, stop;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  check_cuda(cudaEventRecord(start, nullptr), "cudaEventRecord");
  for (int r = 0; r < repeat; ++r) check_cuda(launch_method(L, nullptr), "method kernel launch");
  check_cuda(cudaEventRecord(stop, nullptr), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0.0f;
  check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  PassTiming t;
  t.seconds = ms / 1e3 / std::max(1, repeat);
  bool writes = L.pass == kPassApply || L.pass == kPassSceApply;
  t.bytes = (n_models + 1ull) * n_bytes + (writes ? n_bytes : 0);
  return t;
}

}  // namespace cuda
}  // namespace ladle
