#include "shard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "checksum.h"
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

// Most byte ranges whose CRC a writer keeps (24 bytes each): an output of up to this
// many out-of-order writes is checksummed without reading it back.
constexpr size_t kMaxWrittenRanges = 1u << 18;
// Writes at least this large start their write-back at once (sync_file_range).
constexpr uint64_t kWritebackMinBytes = 256u << 10;
// Writes up to this size right after the last recorded range extend it in place.
constexpr uint64_t kContinueMaxBytes = 256u << 10;

void pwrite_all(const std::string& path, int fd, uint64_t offset, const void* data, uint64_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) raise_write_error(path, r < 0 ? errno : EIO, offset + done, n - done);
    done += static_cast<uint64_t>(r);
  }
}

}  // namespace

// The writers whose descriptor is open, most recently used first. One mutex
// guards every writer's fd_/users_/lru_; writes themselves run unlocked.
class OpenShards {
 public:
  static OpenShards& get() {
    static OpenShards instance;
    return instance;
  }
  std::mutex mu;
  std::list<ShardWriter*> lru;

  // Closes idle writers, least recently used first, until fewer than `keep` are open.
  void evict_down_to(size_t keep) {
    for (auto it = lru.end(); lru.size() >= keep && it != lru.begin();) {
      --it;
      ShardWriter* w = *it;
      if (w->users_ > 0) continue;
      it = lru.erase(it);
      ::close(w->fd_);
      w->fd_ = -1;
    }
  }
  // Opens `path` for writing, making room among the open shards first; on
  // EMFILE/ENFILE closes every idle shard and tries once more.
  int open_for_write(const std::string& path, int flags, mode_t mode = 0) {
    evict_down_to(kMaxOpenShards);
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
      evict_down_to(1);
      fd = ::open(path.c_str(), flags, mode);
    }
    if (fd < 0 && (errno == EMFILE || errno == ENFILE))
      raise(ErrorKind::kIO,
            format("%s: cannot open: %s (the process's open-file limit is used up by other "
                   "files; raise `ulimit -n`)", path.c_str(), std::strerror(errno)),
            errno);
    return fd;
  }
};

int n_open_shards() {
  OpenShards& open = OpenShards::get();
  std::lock_guard<std::mutex> guard(open.mu);
  return static_cast<int>(open.lru.size());
}

void set_enospc_fault_after(uint64_t n_bytes) {
  g_fault_budget.store(n_bytes);
  g_fault_armed.store(n_bytes != 0);
}

ShardWriter::ShardWriter(const std::string& path, uint64_t n_bytes, const std::string& header)
    : path_(path), n_bytes_(n_bytes) {
  LADLE_CHECK(header.size() <= n_bytes, ErrorKind::kValue,
              "%s: header of %zu bytes larger than the file size %llu", path.c_str(),
              header.size(), (unsigned long long)n_bytes);
  OpenShards& open = OpenShards::get();
  std::lock_guard<std::mutex> guard(open.mu);
  int fd = open.open_for_write(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  LADLE_CHECK(fd >= 0, ErrorKind::kIO, "%s: cannot create: %s", path.c_str(),
              std::strerror(errno));
  auto fail = [&](int rc, uint64_t offset, uint64_t n) {
    ::close(fd);
    ::unlink(path.c_str());
    raise_write_error(path, rc, offset, n);
  };
  if (n_bytes > 0) {
    int rc = fault_fires(n_bytes) ? ENOSPC
                                  : ::posix_fallocate(fd, 0, static_cast<off_t>(n_bytes));
    if (rc == EOPNOTSUPP || rc == EINVAL) {
      // File systems without fallocate: size the file; ENOSPC surfaces on write.
      rc = ::ftruncate(fd, static_cast<off_t>(n_bytes)) == 0 ? 0 : errno;
    }
    if (rc != 0) fail(rc, 0, n_bytes);
  }
  if (fault_fires(header.size())) fail(ENOSPC, 0, header.size());
  try {
    pwrite_all(path, fd, 0, header.data(), header.size());
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  header_n_bytes_ = header.size();
  header_crc_ = crc32c(0, header.data(), header.size());
  fd_ = fd;
  open.lru.push_front(this);
  lru_ = open.lru.begin();
  const std::string field = std::string("\"") + kFileChecksumKey + "\":\"" +
                            kFileChecksumPlaceholder + "\"";
  size_t at = header.find(field);
  if (at != std::string::npos && header.find(field, at + 1) == std::string::npos) {
    checksum_at_ = at + field.size() - 1 - std::strlen(kFileChecksumPlaceholder);
    header_ = header;  // to checksum it again once the digits are in
  }
}

ShardWriter::~ShardWriter() {
  std::lock_guard<std::mutex> guard(OpenShards::get().mu);
  close_fd();
}

void ShardWriter::close_fd() {  // caller holds OpenShards::mu
  if (fd_ < 0) return;
  OpenShards::get().lru.erase(lru_);
  ::close(fd_);
  fd_ = -1;
}

int ShardWriter::acquire() {
  OpenShards& open = OpenShards::get();
  std::lock_guard<std::mutex> guard(open.mu);
  LADLE_CHECK(!finished_, ErrorKind::kValue, "%s: write after finish", path_.c_str());
  if (fd_ < 0) {
    fd_ = open.open_for_write(path_, O_WRONLY | O_CLOEXEC);
    LADLE_CHECK(fd_ >= 0, ErrorKind::kIO, "%s: cannot reopen for writing: %s", path_.c_str(),
                std::strerror(errno));
  } else {
    open.lru.erase(lru_);
  }
  open.lru.push_front(this);
  lru_ = open.lru.begin();
  ++users_;
  return fd_;
}

void ShardWriter::release() {
  std::lock_guard<std::mutex> guard(OpenShards::get().mu);
  --users_;
}

void ShardWriter::write_at(uint64_t offset, const void* data, uint64_t n) {
  LADLE_CHECK(offset <= n_bytes_ && n <= n_bytes_ - offset, ErrorKind::kValue,
              "%s: write of %llu bytes at offset %llu exceeds the planned size %llu",
              path_.c_str(), (unsigned long long)n, (unsigned long long)offset,
              (unsigned long long)n_bytes_);
  if (fault_fires(n)) raise_write_error(path_, ENOSPC, offset, n);
  record_written(offset, data, n);
  auto write = [this](uint64_t at, const uint8_t* bytes, uint64_t k) {
    write_direct(at, bytes, k);
  };
  if (!small_writes_.add(offset, data, n, write)) write_direct(offset, data, n);
}

void ShardWriter::write_direct(uint64_t offset, const void* data, uint64_t n) {
  int fd = acquire();
  try {
    pwrite_all(path_, fd, offset, data, n);
#ifdef __linux__
    // Start writing the range back now, while the run goes on, so finish()'s fsync
    // waits for little; fsync still decides durability (errors here are ignored).
    if (n >= kWritebackMinBytes)
      ::sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(n),
                        SYNC_FILE_RANGE_WRITE);
#endif
  } catch (...) {
    release();
    throw;
  }
  release();
}

void ShardWriter::finish() {
  small_writes_.flush([this](uint64_t at, const uint8_t* bytes, uint64_t k) {
    write_direct(at, bytes, k);
  });
  int fd = -1;
  {
    OpenShards& open = OpenShards::get();
    std::lock_guard<std::mutex> guard(open.mu);
    if (finished_) return;
    finished_ = true;
    if (fd_ < 0) {  // evicted: reopen to fsync what was written through other descriptors
      fd = open.open_for_write(path_, O_WRONLY | O_CLOEXEC);
      LADLE_CHECK(fd >= 0, ErrorKind::kIO, "%s: cannot reopen to fsync: %s", path_.c_str(),
                  std::strerror(errno));
    } else {
      open.lru.erase(lru_);
      fd = fd_;
      fd_ = -1;
    }
  }
  try {
    // The header's CRC and the data's, joined; the self-checksum's digits (computed
    // with zeros in their place) then change the header's part only.
    uint64_t data_n_bytes = n_bytes_ - header_n_bytes_;
    uint32_t data_crc = crc_of_ranges();
    crc_ = crc32c_combine(header_crc_, data_crc, data_n_bytes);
    if (checksum_at_ > 0) {
      std::string digits = format("%08x", crc_);
      pwrite_all(path_, fd, checksum_at_, digits.data(), digits.size());
      header_.replace(checksum_at_, digits.size(), digits);
      crc_ = crc32c_combine(crc32c(0, header_.data(), header_.size()), data_crc, data_n_bytes);
      std::string().swap(header_);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    raise(ErrorKind::kIO, format("%s: fsync failed: %s", path_.c_str(), std::strerror(e)), e);
  }
  LADLE_CHECK(::close(fd) == 0, ErrorKind::kIO, "%s: close failed: %s", path_.c_str(),
              std::strerror(errno));
  std::lock_guard<std::mutex> guard(ranges_mu_);
  crc_known_ = true;
}

void ShardWriter::record_written(uint64_t offset, const void* data, uint64_t n) {
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> guard(ranges_mu_);
    if (ranges_dropped_) return;
    if (!ranges_.empty() && n <= kContinueMaxBytes) {
      WrittenRange& last = ranges_.back();
      if (last.offset + last.n == offset) {
        last.crc = crc32c(last.crc, data, n);
        last.n += n;
        return;
      }
    }
  }
  uint32_t crc = crc32c(0, data, n);
  std::lock_guard<std::mutex> guard(ranges_mu_);
  if (ranges_dropped_) return;
  if (ranges_.size() == kMaxWrittenRanges) {
    ranges_dropped_ = true;
    std::vector<WrittenRange>().swap(ranges_);
    return;
  }
  ranges_.push_back({offset, n, crc});
}

uint32_t ShardWriter::crc_of_ranges() {
  std::lock_guard<std::mutex> guard(ranges_mu_);
  const uint64_t begin = header_n_bytes_;
  auto from_file = [&] { return file_crc32c(path_, 0, begin, n_bytes_ - begin); };
  if (ranges_dropped_) return from_file();
  std::sort(ranges_.begin(), ranges_.end(),
            [](const WrittenRange& a, const WrittenRange& b) { return a.offset < b.offset; });
  uint32_t crc = 0;
  uint64_t at = begin;
  for (const WrittenRange& r : ranges_) {
    if (r.offset < at) return from_file();  // overlapping writes (or into the header)
    if (r.offset > at) crc = file_crc32c(path_, crc, at, r.offset - at);
    crc = crc32c_combine(crc, r.crc, r.n);
    at = r.offset + r.n;
  }
  if (at < n_bytes_) crc = file_crc32c(path_, crc, at, n_bytes_ - at);
  std::vector<WrittenRange>().swap(ranges_);
  return crc;
}

bool ShardWriter::written_crc32c(uint32_t* crc) const {
  std::lock_guard<std::mutex> guard(ranges_mu_);
  if (!crc_known_) return false;
  *crc = crc_;
  return true;
}

}  // namespace ladle
