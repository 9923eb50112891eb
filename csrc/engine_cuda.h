// The CUDA backend's host side: device discovery that never throws, the
// streaming engine that runs the CPU engine's Plan through the GPU
// (mmap -> pinned staging -> H2D -> fused kernel -> D2H -> ShardWriter, one
// CUDA stream and staging set per worker so copies overlap compute), and
// DeviceSum, which computes weighted sums of tensors already on the GPU
// (raw device pointers, e.g. torch's data_ptr()) with one launch per call.
// An emulated device (host memory, kernel code run on the CPU) stands in for
// the GPU in tests on machines without one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"
#include "plan.h"

namespace ladle {
namespace cuda {

// What the CUDA runtime reports now. device_count is 0 and `error` says why
// when there is no driver or no device; never throws.
struct Status {
  int device_count = 0;
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;   // 0 without a driver
  std::string error;        // empty when device_count > 0
};
Status status();

struct DeviceProps {
  std::string name;
  int major = 0, minor = 0;
  int sm_count = 0;
  uint64_t total_n_bytes = 0;
};
DeviceProps device_props(int device);

// Backend a run uses: the real GPU, or the host emulator (tests only).
enum class Backend : uint8_t { kCuda, kEmulator };

struct Options {
  int device = 0;
  int workers = 3;                         // streams / staging sets in flight
  uint64_t memory_budget = 256ull << 20;   // pinned host bytes (device uses as much)
  uint64_t chunk_elems = 0;                // 0: derive from the budget
  bool check_finite = false;
  Backend backend = Backend::kCuda;
};

// Runs every job of `plan` (same contract and results as ladle::run_plan).
// Weighted sums and nearswap run on the GPU; pass-through copies are checked and
// written on the CPU. Memory sources and sinks must be host memory.
RunStats run_plan(const Plan& plan, const Options& options, const ProgressFn& progress);

// What this backend runs: every kind. Weighted sums, copies, maxima and nearswap
// (run_plan); the methods' task programs, Gram reductions, DELLA, SCE and dot products
// (methods_cuda.h).
inline bool supports(JobKind) { return true; }

// Chunk length (elements) run_plan uses for `plan` under `options`.
uint64_t choose_chunk_elems(const Plan& plan, const Options& options);

// One output tensor of a DeviceSum: out = Σ_k w_k · in_k, all in device memory.
struct DeviceTensor {
  std::string name;  // for messages
  uint64_t out_address = 0;
  DType out_dtype = DType::kF32;
  uint64_t n_elems = 0;
  std::vector<uint64_t> in_addresses;  // one per input position
  std::vector<DType> in_dtypes;
};

// A fixed set of output tensors over device-resident inputs, all with the same
// number of inputs; run() sets one weight per input position and computes every
// tensor with a single kernel launch on the caller's stream (asynchronous).
class DeviceSum {
 public:
  DeviceSum(int device, std::vector<DeviceTensor> tensors, Backend backend);
  ~DeviceSum();
  DeviceSum(const DeviceSum&) = delete;
  DeviceSum& operator=(const DeviceSum&) = delete;

  // `stream` is a cudaStream_t as an integer (0: the legacy default stream).
  // Weights are rounded to fp32 once for fp32 tensors; tensors with an F64 input
  // or output use them as given (fp64), as the host engine does.
  void run(const std::vector<double>& weights, float post_scale, uint64_t stream);

  int n_inputs() const { return n_inputs_; }
  size_t n_tensors() const { return tensors_.size(); }
  uint64_t n_elems() const { return n_elems_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<DeviceTensor> tensors_;
  int n_inputs_ = 0;
  uint64_t n_elems_ = 0;
};

}  // namespace cuda
}  // namespace ladle
