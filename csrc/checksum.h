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

// CRC-32C of a whole file, read with pread through one reused buffer.
uint32_t file_crc32c(const std::string& path);

}  // namespace ladle
