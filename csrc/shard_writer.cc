#include "shard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "common.h"

namespace ladle {
namespace {

std::atomic<uint64_t> g_fault_budget{0};
std::atomic<bool> g_fault_armed{false};

// Returns true when the injected fault should fire for a write of n bytes.
bool fault_fires(uint64_t n) {
  if (!g_fault_armed.load()) return false;
  uint64_t left = g_fault_budget.load();
  while (true) {
    if (n > left) return true;
    if (g_fault_budget.compare_exchange_weak(left, left - n)) return false;
  }
}

[[noreturn]] void raise_write_error(const std::string& path, int e, uint64_t offset, uint64_t n) {
  if (e == ENOSPC || e == EDQUOT)
    raise(ErrorKind::kIO,
          format("%s: disk full (%s) writing %llu bytes at offset %llu", path.c_str(),
                 std::strerror(e), (unsigned long long)n, (unsigned long long)offset),
          e);
  raise(ErrorKind::kIO,
        format("%s: write of %llu bytes at offset %llu failed: %s", path.c_str(),
               (unsigned long long)n, (unsigned long long)offset, std::strerror(e)),
        e);
}

}  // namespace

void set_enospc_fault_after(uint64_t n_bytes) {
  g_fault_budget.store(n_bytes);
  g_fault_armed.store(n_bytes != 0);
}

ShardWriter::ShardWriter(const std::string& path, uint64_t n_bytes, const std::string& header)
    : path_(path), n_bytes_(n_bytes) {
  LADLE_CHECK(header.size() <= n_bytes, ErrorKind::kValue,
              "%s: header of %zu bytes larger than the file size %llu", path.c_str(),
              header.size(), (unsigned long long)n_bytes);
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  LADLE_CHECK(fd_ >= 0, ErrorKind::kIO, "%s: cannot create: %s", path.c_str(),
              std::strerror(errno));
  if (n_bytes > 0) {
    int rc = fault_fires(n_bytes) ? ENOSPC
                                  : ::posix_fallocate(fd_, 0, static_cast<off_t>(n_bytes));
    if (rc == EOPNOTSUPP || rc == EINVAL) {
      // File systems without fallocate: size the file; ENOSPC surfaces on write.
      rc = ::ftruncate(fd_, static_cast<off_t>(n_bytes)) == 0 ? 0 : errno;
    }
    if (rc != 0) {
      ::close(fd_);
      fd_ = -1;
      ::unlink(path.c_str());
      raise_write_error(path, rc, 0, n_bytes);
    }
  }
  write_at(0, header.data(), header.size());
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void ShardWriter::write_at(uint64_t offset, const void* data, uint64_t n) {
  LADLE_CHECK(fd_ >= 0, ErrorKind::kValue, "%s: write after finish", path_.c_str());
  LADLE_CHECK(offset <= n_bytes_ && n <= n_bytes_ - offset, ErrorKind::kValue,
              "%s: write of %llu bytes at offset %llu exceeds the planned size %llu",
              path_.c_str(), (unsigned long long)n, (unsigned long long)offset,
              (unsigned long long)n_bytes_);
  if (fault_fires(n)) raise_write_error(path_, ENOSPC, offset, n);
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pwrite(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) raise_write_error(path_, r < 0 ? errno : EIO, offset + done, n - done);
    done += static_cast<uint64_t>(r);
  }
}

void ShardWriter::finish() {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    raise(ErrorKind::kIO, format("%s: fsync failed: %s", path_.c_str(), std::strerror(e)), e);
  }
  LADLE_CHECK(::close(fd) == 0, ErrorKind::kIO, "%s: close failed: %s", path_.c_str(),
              std::strerror(errno));
}

}  // namespace ladle
