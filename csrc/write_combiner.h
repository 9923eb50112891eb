// Gathers small positional writes to one file in a buffer window and writes each
// contiguous run of them with one call, so that a shard of 10^6 tiny tensors does
// not cost a pwrite per tensor. The writes it takes must not overlap one another
// (a shard's tensors never do): bytes between them are never written.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

namespace ladle {

class WriteCombiner {
 public:
  using WriteFn = std::function<void(uint64_t offset, const uint8_t* data, uint64_t n)>;

  // Writes of at most kSmallBytes are gathered, in a window of kWindowBytes.
  static constexpr uint64_t kSmallBytes = 64 << 10;
  static constexpr uint64_t kWindowBytes = 1 << 20;
  // Most windows allocated at once in the process (each holds kWindowBytes of memory);
  // past this, writes go straight to their file.
  static constexpr int kMaxWindows = 8;

  WriteCombiner() = default;
  ~WriteCombiner();
  WriteCombiner(const WriteCombiner&) = delete;
  WriteCombiner& operator=(const WriteCombiner&) = delete;

  // Takes [data, data + n) for `offset` when it is small and falls inside the window
  // (a write past the window first writes out what the window holds and moves it
  // there). Returns false when the caller must write it itself. Thread-safe; `write`
  // runs under this combiner's lock.
  bool add(uint64_t offset, const void* data, uint64_t n, const WriteFn& write);
  // Writes out everything held and frees the window.
  void flush(const WriteFn& write);

 private:
  void write_held(const WriteFn& write);  // caller holds mu_

  std::mutex mu_;
  uint64_t start_ = 0;                                  // file offset of window[0]
  std::vector<uint8_t> window_;                         // empty: no window allocated
  std::vector<std::pair<uint64_t, uint64_t>> pieces_;  // (offset, n) held, unordered
};

}  // namespace ladle
