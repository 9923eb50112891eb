// WriteCombiner: see write_combiner.h.
#include "write_combiner.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace ladle {
namespace {
std::atomic<int> g_windows{0};
}  // namespace

WriteCombiner::~WriteCombiner() {
  if (!window_.empty()) g_windows.fetch_sub(1);
}

bool WriteCombiner::add(uint64_t offset, const void* data, uint64_t n, const WriteFn& write) {
  if (n == 0 || n > kSmallBytes) return false;
  std::lock_guard<std::mutex> guard(mu_);
  if (window_.empty()) {
    if (g_windows.fetch_add(1) >= kMaxWindows) {
      g_windows.fetch_sub(1);
      return false;
    }
    window_.resize(kWindowBytes);
    start_ = offset;
  } else if (offset < start_) {
    return false;  // a straggler behind the window: written directly
  } else if (offset + n > start_ + kWindowBytes) {
    write_held(write);
    start_ = offset;
  }
  std::memcpy(window_.data() + (offset - start_), data, n);
  pieces_.emplace_back(offset, n);
  return true;
}

void WriteCombiner::flush(const WriteFn& write) {
  std::lock_guard<std::mutex> guard(mu_);
  if (window_.empty()) return;
  write_held(write);
  std::vector<uint8_t>().swap(window_);
  g_windows.fetch_sub(1);
}

void WriteCombiner::write_held(const WriteFn& write) {
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  pieces.swap(pieces_);  // nothing is written twice, even when a write fails
  std::sort(pieces.begin(), pieces.end());
  for (size_t i = 0; i < pieces.size();) {
    uint64_t begin = pieces[i].first, end = begin + pieces[i].second;
    for (++i; i < pieces.size() && pieces[i].first == end; ++i) end += pieces[i].second;
    write(begin, window_.data() + (begin - start_), end - begin);
  }
}

}  // namespace ladle
