#include "mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common.h"

namespace ladle {
namespace {

uint64_t page_n_bytes() {
  static const uint64_t n = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return n;
}

}  // namespace

MappedFile::MappedFile(const std::string& path, uint64_t expected_n_bytes) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LADLE_CHECK(fd >= 0, ErrorKind::kIO, "%s: cannot open: %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    raise(ErrorKind::kIO, format("%s: cannot stat: %s", path.c_str(), std::strerror(e)), e);
  }
  n_bytes_ = static_cast<uint64_t>(st.st_size);
  if (expected_n_bytes != UINT64_MAX && n_bytes_ != expected_n_bytes) {
    ::close(fd);
    raise(ErrorKind::kFormat,
          format("%s: file size changed from %llu to %llu bytes since its header was read",
                 path.c_str(), (unsigned long long)expected_n_bytes,
                 (unsigned long long)n_bytes_));
  }
  if (n_bytes_ > 0) {
    void* p = ::mmap(nullptr, n_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    ::close(fd);
    LADLE_CHECK(p != MAP_FAILED, ErrorKind::kIO, "%s: cannot mmap %llu bytes: %s", path.c_str(),
                (unsigned long long)n_bytes_, std::strerror(e));
    data_ = static_cast<uint8_t*>(p);
    ::madvise(data_, n_bytes_, MADV_SEQUENTIAL);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, n_bytes_);
}

void MappedFile::prefetch(uint64_t offset, uint64_t n) const {
  uint64_t page = page_n_bytes();
  // Ranges under kMinPrefetchPages pages are left to the kernel's sequential read-ahead:
  // a hint per tiny tensor or per row of per-row statistics would cost a system call
  // each (10^5..10^6 of them), and two threads' hints contend for the mapping's lock.
  constexpr uint64_t kMinPrefetchPages = 16;
  if (!data_ || n < kMinPrefetchPages * page || offset >= n_bytes_) return;
  uint64_t begin = offset / page * page;
  uint64_t end = std::min(offset + n, n_bytes_);
  ::madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

void MappedFile::release(uint64_t offset, uint64_t n) const {
  if (!data_ || n == 0) return;
  uint64_t page = page_n_bytes();
  uint64_t begin = (offset + page - 1) / page * page;
  uint64_t end = std::min(offset + n, n_bytes_);
  if (end != n_bytes_) end = end / page * page;  // the file's last page may be partial
  if (end > begin) ::madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

}  // namespace ladle
