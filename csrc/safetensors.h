// Strict reader and writer of the safetensors header.
//
// The file layout, validated step by step by read_header():
//   1. 8 bytes: N, the header length, unsigned 64-bit little-endian.
//      8 + N must not exceed the file size, and N <= 100 MB.
//   2. N bytes: a UTF-8 JSON object, starting with '{', optionally padded at the
//      end with spaces (0x20). Keys are unique.
//   3. Key "__metadata__" (optional): an object mapping strings to strings.
//   4. Every other key is a tensor name mapping to exactly
//      {"dtype": STRING, "shape": [UINT...], "data_offsets": [BEGIN, END]}.
//      dtype is one of the format's names (dtype.h); shape entries and offsets
//      are non-negative integers.
//   5. END - BEGIN == numel * bits / 8 exactly (checked multiplication; sub-byte
//      dtypes must fill whole bytes), BEGIN <= END.
//   6. Sorted by offset, tensors tile the data buffer from 0 with no hole and no
//      overlap, and the last END equals the buffer size: file size - 8 - N.
// Offsets are relative to the start of the data buffer at byte 8 + N.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dtype.h"

namespace ladle {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t n_elems = 0;
  uint64_t begin = 0;  // relative to the data buffer
  uint64_t end = 0;
};

struct Header {
  uint64_t header_n_bytes = 0;  // N
  uint64_t data_start = 0;      // 8 + N
  uint64_t file_n_bytes = 0;
  std::vector<std::pair<std::string, std::string>> metadata;
  bool has_metadata = false;
  std::vector<TensorEntry> tensors;  // in file order of their offsets
};

// Reads and validates the header of `path`. Errors name the file and tensor.
Header read_header(const std::string& path);

// Validates header bytes already in memory (`file_n_bytes` is the full size).
// `label` names the source in error messages.
Header parse_header(const std::string& label, const std::string& json, uint64_t file_n_bytes);

// Serialises a header (tensor entries in the given order; offsets as given),
// padded with spaces so the data buffer starts 8-byte aligned. Returns the
// complete prefix: 8-byte length + JSON.
std::string serialize_header(const std::vector<TensorEntry>& tensors,
                             const std::vector<std::pair<std::string, std::string>>& metadata);

// Number of bytes of `n_elems` elements of `dtype`; raises on overflow or on
// sub-byte dtypes that do not fill whole bytes.
uint64_t tensor_n_bytes(DType dtype, uint64_t n_elems, const std::string& label);

}  // namespace ladle
