// DeviceOps over the CUDA runtime, and the emulator's host-memory stand-in.
#include "device_ops.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace ladle {
namespace cuda {

void check_cuda(int code, const char* what) {
  cudaError_t err = static_cast<cudaError_t>(code);
  if (err == cudaSuccess) return;
  raise(ErrorKind::kBackend,
        format("CUDA error in %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err)));
}

namespace {

class CudaOps final : public DeviceOps {
 public:
  explicit CudaOps(int device) : device_(device) {
    Status s = status();
    LADLE_CHECK(s.device_count > 0, ErrorKind::kBackend, "CUDA is not available: %s",
                s.error.c_str());
    LADLE_CHECK(device >= 0 && device < s.device_count, ErrorKind::kBackend,
                "CUDA device %d does not exist (%d device(s) found)", device, s.device_count);
    check_cuda(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute(multiProcessorCount)");
  }
  void bind_thread() override { check_cuda(cudaSetDevice(device_), "cudaSetDevice"); }
  void* alloc_host(uint64_t n) override {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, std::max<uint64_t>(n, 1), cudaHostAllocDefault);
    LADLE_CHECK(err == cudaSuccess, ErrorKind::kBackend,
                "CUDA error in cudaHostAlloc of %llu bytes of pinned staging memory: %s "
                "(lower memory_budget)", (unsigned long long)n, cudaGetErrorString(err));
    return p;
  }
  void free_host(void* p) override { cudaFreeHost(p); }
  void* alloc_device(uint64_t n) override {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, std::max<uint64_t>(n, 1));
    LADLE_CHECK(err == cudaSuccess, ErrorKind::kBackend,
                "CUDA error in cudaMalloc of %llu bytes on device %d: %s (lower memory_budget)",
                (unsigned long long)n, device_, cudaGetErrorString(err));
    return p;
  }
  void free_device(void* p) override { cudaFree(p); }
  void* create_stream() override {
    cudaStream_t s = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    return s;
  }
  void destroy_stream(void* s) override { cudaStreamDestroy(static_cast<cudaStream_t>(s)); }
  void copy_h2d(void* dst, const void* src, uint64_t n, void* s) override {
    check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(s)),
               "cudaMemcpyAsync (host to device)");
  }
  void copy_d2h(void* dst, const void* src, uint64_t n, void* s) override {
    check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(s)),
               "cudaMemcpyAsync (device to host)");
  }
  void zero_device(void* dst, uint64_t n, void* s) override {
    check_cuda(cudaMemsetAsync(dst, 0, n, static_cast<cudaStream_t>(s)), "cudaMemsetAsync");
  }
  void launch(const LaunchArgs& args, void* s) override {
    check_cuda(launch_weighted_sum(args, s, sm_count_), "weighted_sum kernel launch");
  }
  void launch_method(const MethodLaunch& launch, void* s) override {
    check_cuda(cuda::launch_method(launch, s), "method kernel launch");
  }
  void sync(void* s) override {
    check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(s)), "cudaStreamSynchronize");
  }
  const char* name() const override { return "cuda"; }

 private:
  int device_;
  int sm_count_ = 1;
};

// Host memory stands in for device memory; copies are memcpy, the kernel runs
// its per-thread code on the CPU. Synchronous, so sync() has nothing to do.
class EmulatorOps final : public DeviceOps {
 public:
  void bind_thread() override {}
  void* alloc_host(uint64_t n) override { return checked_alloc(n); }
  void free_host(void* p) override { std::free(p); }
  void* alloc_device(uint64_t n) override { return checked_alloc(n); }
  void free_device(void* p) override { std::free(p); }
  void* create_stream() override { return nullptr; }
  void destroy_stream(void*) override {}
  void copy_h2d(void* dst, const void* src, uint64_t n, void*) override { std::memcpy(dst, src, n); }
  void copy_d2h(void* dst, const void* src, uint64_t n, void*) override { std::memcpy(dst, src, n); }
  void zero_device(void* dst, uint64_t n, void*) override { std::memset(dst, 0, n); }
  void launch(const LaunchArgs& args, void*) override { emulate_weighted_sum(args); }
  void launch_method(const MethodLaunch& launch, void*) override { emulate_method(launch); }
  void sync(void*) override {}
  const char* name() const override { return "cuda-emulator"; }

 private:
  static void* checked_alloc(uint64_t n) {
    void* p = std::aligned_alloc(kTableAlign, align_up(std::max<uint64_t>(n, 1), kTableAlign));
    LADLE_CHECK(p != nullptr, ErrorKind::kBackend, "emulator: cannot allocate %llu bytes",
                (unsigned long long)n);
    return p;
  }
};

}  // namespace

std::unique_ptr<DeviceOps> make_ops(Backend backend, int device) {
  if (backend == Backend::kEmulator) return std::make_unique<EmulatorOps>();
  return std::make_unique<CudaOps>(device);
}

RestoreCurrentDevice::RestoreCurrentDevice(Backend backend) {
  if (backend == Backend::kCuda && cudaGetDevice(&device_) != cudaSuccess) {
    device_ = -1;
    cudaGetLastError();
  }
}

RestoreCurrentDevice::~RestoreCurrentDevice() {
  if (device_ >= 0) cudaSetDevice(device_);
}

}  // namespace cuda
}  // namespace ladle
