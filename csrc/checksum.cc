#include "checksum.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace ladle {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

struct Table {
  uint32_t entries[256];
  Table() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPolyReflected : c >> 1;
      entries[i] = c;
    }
  }
};

uint32_t crc32c_table(uint32_t crc, const uint8_t* p, size_t n) {
  static const Table table;
  for (size_t i = 0; i < n; ++i) crc = table.entries[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p,
                                                         size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

bool has_sse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool sse42 = has_sse42();
  crc = sse42 ? crc32c_sse42(crc, p, n) : crc32c_table(crc, p, n);
#else
  crc = crc32c_table(crc, p, n);
#endif
  return ~crc;
}

uint32_t file_crc32c(const std::string& path, uint32_t crc, uint64_t offset, uint64_t n_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LADLE_CHECK(fd >= 0, ErrorKind::kIO, "%s: cannot open: %s", path.c_str(), std::strerror(errno));
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min<uint64_t>(8u << 20, n_bytes)));
  const bool whole = n_bytes == UINT64_MAX;
  while (n_bytes > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), n_bytes));
    ssize_t r = ::pread(fd, buffer.data(), want, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      ::close(fd);
      raise(ErrorKind::kIO, format("%s: read failed at offset %llu: %s", path.c_str(),
                                   (unsigned long long)offset, std::strerror(e)), e);
    }
    if (r == 0 && whole) break;
    if (r == 0) {
      ::close(fd);
      raise(ErrorKind::kIO, format("%s: ends at offset %llu, %llu bytes short of the checksummed "
                                   "range", path.c_str(), (unsigned long long)offset,
                                   (unsigned long long)n_bytes));
    }
    crc = crc32c(crc, buffer.data(), static_cast<size_t>(r));
    offset += static_cast<uint64_t>(r);
    if (!whole) n_bytes -= static_cast<uint64_t>(r);
  }
  ::close(fd);
  return crc;
}

}  // namespace ladle
