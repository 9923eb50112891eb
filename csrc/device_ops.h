// The device the CUDA backend's host code drives, real or emulated: allocation,
// streams, copies and kernel launches behind one interface, so the streaming engine
// (engine_cuda.cc) and the method runner (methods_cuda.cc) run unchanged on the
// emulator (host memory, the kernels' per-thread code run on the CPU).
#pragma once

#include <cstdint>
#include <memory>

#include "engine_cuda.h"
#include "kernels_cuda.h"
#include "method_kernels_cuda.h"

namespace ladle {
namespace cuda {

inline uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

// Raises a kBackend error naming `what` unless `err` (a cudaError_t) is success.
void check_cuda(int err, const char* what);

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  virtual void bind_thread() = 0;  // makes the device current on the calling thread
  virtual void* alloc_host(uint64_t n_bytes) = 0;
  virtual void free_host(void* p) = 0;
  virtual void* alloc_device(uint64_t n_bytes) = 0;
  virtual void free_device(void* p) = 0;
  virtual void* create_stream() = 0;
  virtual void destroy_stream(void* stream) = 0;
  virtual void copy_h2d(void* dst, const void* src, uint64_t n_bytes, void* stream) = 0;
  virtual void copy_d2h(void* dst, const void* src, uint64_t n_bytes, void* stream) = 0;
  virtual void zero_device(void* dst, uint64_t n_bytes, void* stream) = 0;
  virtual void launch(const LaunchArgs& args, void* stream) = 0;
  virtual void launch_method(const MethodLaunch& launch, void* stream) = 0;
  virtual void sync(void* stream) = 0;
  virtual const char* name() const = 0;
};

std::unique_ptr<DeviceOps> make_ops(Backend backend, int device);

// Puts the calling thread's current CUDA device back when a run ends, however it ends
// (a run binds its device to the calling thread). Does nothing for the emulator.
class RestoreCurrentDevice {
 public:
  explicit RestoreCurrentDevice(Backend backend);
  ~RestoreCurrentDevice();
  RestoreCurrentDevice(const RestoreCurrentDevice&) = delete;
  RestoreCurrentDevice& operator=(const RestoreCurrentDevice&) = delete;

 private:
  int device_ = -1;
};

}  // namespace cuda
}  // namespace ladle
