// Writes one output safetensors file: created exclusively, space reserved up
// front (so a full disk fails before any data is written), header first, then
// data chunks at planned offsets from any thread, fsynced when finished.
#pragma once

#include <cstdint>
#include <string>

namespace ladle {

class ShardWriter {
 public:
  // Creates `path` (must not exist) of `n_bytes` total and writes `header` at 0.
  ShardWriter(const std::string& path, uint64_t n_bytes, const std::string& header);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Thread-safe positional write of [data, data + n) at absolute `offset`.
  void write_at(uint64_t offset, const void* data, uint64_t n);
  // fsyncs and closes; further writes fail.
  void finish();

  const std::string& path() const { return path_; }
  uint64_t n_bytes() const { return n_bytes_; }

 private:
  std::string path_;
  uint64_t n_bytes_;
  int fd_ = -1;
};

// Test hook: make writes fail with ENOSPC once `n_bytes` more bytes have been
// written (0 disables). Lets tests exercise the disk-full path in-process.
void set_enospc_fault_after(uint64_t n_bytes);

}  // namespace ladle
