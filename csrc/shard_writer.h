// Writes one output safetensors file: created exclusively, space reserved up
// front (so a full disk fails before any data is written), header first, then
// data chunks at planned offsets from any thread, fsynced when finished.
// Descriptors are opened lazily and at most kMaxOpenShards stay open across all
// writers (least recently used idle ones are closed), so an output of thousands
// of shards runs under a low `ulimit -n`.
// Self-checksummed files: a header whose metadata holds
// "ladle_file_crc32c":"00000000" gets those 8 digits replaced, before the
// fsync, by the CRC-32C (lowercase hex) of the whole file as written with the
// zeros in place; `ladle verify` recomputes it the same way. The file stays a
// plain safetensors file (the value is an ordinary metadata string).
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "write_combiner.h"

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
  // Seals the checksum field (if any), fsyncs and closes; further writes fail.
  void finish();

  // The CRC-32C of the finished file (self-checksum digits included), joined from
  // the CRCs of the header and of every write_at taken as they were written: no
  // read of the file, except of gaps never written, or of all of it when the
  // writes overlapped or were too many to record. False before finish().
  bool written_crc32c(uint32_t* crc) const;

  const std::string& path() const { return path_; }
  uint64_t n_bytes() const { return n_bytes_; }

 private:
  friend class OpenShards;
  int acquire();   // opens (or reuses) the descriptor and pins it for one write
  void release();  // unpins it; it may then be closed to make room for another
  void close_fd();
  void write_direct(uint64_t offset, const void* data, uint64_t n);

  std::string path_;
  uint64_t n_bytes_;
  int fd_ = -1;            // -1 while closed (not yet opened, evicted or finished)
  int users_ = 0;          // writes in flight on fd_ (never evicted while > 0)
  bool finished_ = false;
  uint64_t checksum_at_ = 0;  // file offset of the checksum field's digits; 0: none
  std::list<ShardWriter*>::iterator lru_;  // place among the open writers
  WriteCombiner small_writes_;  // tiny tensors' writes, written out in runs

  // CRC-32C of each written byte range; a write right after the last recorded
  // range continues its CRC instead of adding a range (tiny tensors in order).
  struct WrittenRange {
    uint64_t offset;
    uint64_t n;
    uint32_t crc;
  };
  void record_written(uint64_t offset, const void* data, uint64_t n);
  uint32_t crc_of_ranges();  // of the data after the header, at finish()
  uint64_t header_n_bytes_ = 0;
  uint32_t header_crc_ = 0;
  std::string header_;  // kept only while its checksum digits are to be filled in
  mutable std::mutex ranges_mu_;
  std::vector<WrittenRange> ranges_;
  bool ranges_dropped_ = false;  // too many to keep: the CRC is read from the file
  bool crc_known_ = false;
  uint32_t crc_ = 0;
};

// Metadata key of the whole-file checksum and its placeholder value.
constexpr const char* kFileChecksumKey = "ladle_file_crc32c";
constexpr const char* kFileChecksumPlaceholder = "00000000";

// Most shard descriptors open at once across every writer of the process.
constexpr int kMaxOpenShards = 16;
// Number of shard descriptors open right now (for tests).
int n_open_shards();

// Test hook: make writes fail with ENOSPC once `n_bytes` more bytes have been
// written (0 disables). Lets tests exercise the disk-full path in-process.
void set_enospc_fault_after(uint64_t n_bytes);

}  // namespace ladle
