// CRC-32C (Castagnoli) of byte ranges and whole files: the shard checksums of
// resume manifests and `ladle verify`. SSE4.2 hardware CRC when the CPU has it,
// a table-driven fallback otherwise (both give the same value).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ladle {

// Continues `crc` (0 to start) over [data, data + n).
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

// The CRC-32C of A followed by B from crc1 = crc32c(0, A), crc2 = crc32c(0, B) and
// len2 = |B|, without the bytes (as zlib's crc32_combine).
uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

// CRC-32C of a file (or of its bytes [offset, offset + n_bytes), continuing
// `crc`), read with pread through one reused buffer. Reading stops at the end
// of the file; a range past it is an IO error.
uint32_t file_crc32c(const std::string& path, uint32_t crc = 0, uint64_t offset = 0,
                     uint64_t n_bytes = UINT64_MAX);

}  // namespace ladle
