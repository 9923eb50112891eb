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

// a * b modulo the CRC polynomial, both in the reflected bit order of the register
// (bit 31 is x^0): the carry-less product that shifts a CRC over zero bytes.
uint32_t multiply_mod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPolyReflected : b >> 1;
  }
  return product;
}

// x^(2^k) mod P for k < 67 (n < 2^64 bytes is 2^(k-3) with k < 67).
struct PowersOfX {
  uint32_t p[67];
  PowersOfX() {
    p[0] = 1u << 30;  // x^1
    for (int k = 1; k < 67; ++k) p[k] = multiply_mod(p[k - 1], p[k - 1]);
  }
};

// x^(8 n) mod P: multiplying a register by it appends n zero bytes.
uint32_t x_pow_8n(uint64_t n) {
  static const PowersOfX powers;
  uint32_t result = 1u << 31;  // x^0
  for (int k = 3; n != 0; n >>= 1, ++k)
    if (n & 1) result = multiply_mod(powers.p[k], result);
  return result;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42_stream(uint32_t crc, const uint8_t* p,
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

// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three
// independent streams over thirds of a long buffer, joined by shifting the first
// ones over the bytes after them, run about three times as fast as one.
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p,
                                                         size_t n) {
  constexpr size_t kMinSplit = 3 * 4096;
  if (n < kMinSplit) return crc32c_sse42_stream(crc, p, n);
  size_t third = n / 3 / 8 * 8;
  uint64_t c0 = crc, c1 = 0, c2 = 0;
  for (size_t i = 0; i < third; i += 8) {
    uint64_t w0, w1, w2;
    std::memcpy(&w0, p + i, 8);
    std::memcpy(&w1, p + third + i, 8);
    std::memcpy(&w2, p + 2 * third + i, 8);
    c0 = _mm_crc32_u64(c0, w0);
    c1 = _mm_crc32_u64(c1, w1);
    c2 = _mm_crc32_u64(c2, w2);
  }
  uint32_t shift = x_pow_8n(third);
  uint32_t c = multiply_mod(shift, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
  c = multiply_mod(shift, c) ^ static_cast<uint32_t>(c2);
  return crc32c_sse42_stream(c, p + 3 * third, n - 3 * third);
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

uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
  // The pre- and post-inversions of crc1 and crc2 cancel: only crc1's register moves.
  return multiply_mod(x_pow_8n(len2), crc1) ^ crc2;
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
