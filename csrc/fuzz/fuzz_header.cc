// libFuzzer target for the safetensors header parser and the JSON reader it is
// built on. Each input is treated as a whole safetensors file held in memory:
// the 8-byte length prefix is validated as read_header() does, the JSON is
// parsed by parse_header(), and every accepted header must survive a
// serialize -> parse round trip unchanged. The same bytes are also fed to
// parse_json() raw, so the JSON reader is fuzzed without the prefix.
//
// Build (clang only):  cmake -DLADLE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ...
// Run:                 make fuzz   (or build/fuzz/fuzz_header corpus/ -max_total_time=60)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common.h"
#include "json.h"
#include "safetensors.h"

namespace {

void check(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_header: invariant violated: %s\n", what);
    std::abort();
  }
}

void round_trip(const ladle::Header& h) {
  std::string prefix = ladle::serialize_header(h.tensors, h.metadata);
  uint64_t buffer = h.file_n_bytes - h.data_start;
  ladle::Header again =
      ladle::parse_header("roundtrip", prefix.substr(8), prefix.size() + buffer);
  check(again.tensors.size() == h.tensors.size(), "round trip keeps the tensor count");
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const ladle::TensorEntry& a = h.tensors[i];
    const ladle::TensorEntry& b = again.tensors[i];
    check(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.begin == b.begin &&
              a.end == b.end,
          "round trip keeps every tensor entry");
  }
  check(again.metadata == h.metadata, "round trip keeps the metadata");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  // 1. The JSON reader on its own.
  {
    ladle::JsonValue root;
    std::string error;
    if (!ladle::parse_json(bytes, &root, &error)) check(!error.empty(), "errors have a message");
  }
  // 2. The whole file as read_header() sees it.
  if (size < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > ladle::kMaxHeaderBytes || n > size - 8) return 0;
  try {
    ladle::Header h = ladle::parse_header("fuzz", bytes.substr(8, n), size);
    check(h.data_start == 8 + n, "data_start is 8 + N");
    uint64_t cursor = 0;
    for (const ladle::TensorEntry& t : h.tensors) {
      check(t.begin == cursor && t.begin <= t.end, "tensors tile the buffer");
      cursor = t.end;
    }
    check(cursor == size - h.data_start, "tensors cover the buffer exactly");
    round_trip(h);
  } catch (const ladle::Error& e) {
    check(e.kind() == ladle::ErrorKind::kFormat, "parser errors are format errors");
  }
  // 3. The same JSON against an arbitrary claimed file size (parse_header is public:
  //    a size smaller than the header itself must be refused, not wrap around).
  try {
    ladle::parse_header("fuzz", bytes.substr(8, n), size > 16 ? data[8] : 0);
  } catch (const ladle::Error&) {
  }
  return 0;
}
