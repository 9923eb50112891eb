// RAII read-only memory map of a whole file, with hints to prefetch ranges
// ahead of the cursor and to drop ranges behind it from the process's RSS.
#pragma once

#include <cstdint>
#include <string>

namespace ladle {

class MappedFile {
 public:
  // Maps `path`; when `expected_n_bytes` is not UINT64_MAX the file must still
  // have that size (it was validated at that size).
  explicit MappedFile(const std::string& path, uint64_t expected_n_bytes = UINT64_MAX);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t n_bytes() const { return n_bytes_; }
  const std::string& path() const { return path_; }

  // Asks the kernel to start reading [offset, offset + n) (MADV_WILLNEED).
  void prefetch(uint64_t offset, uint64_t n) const;
  // Drops whole pages inside [offset, offset + n) from this mapping (MADV_DONTNEED):
  // they stay in the page cache but stop counting towards RSS.
  void release(uint64_t offset, uint64_t n) const;

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  uint64_t n_bytes_ = 0;
};

}  // namespace ladle
