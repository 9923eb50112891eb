#include "safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common.h"
#include "json.h"

namespace ladle {
namespace {

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

uint64_t require_uint(const std::string& label, const std::string& tensor, const char* field,
                      const JsonValue& v) {
  LADLE_CHECK(v.kind == JsonValue::Kind::kNumber && v.is_uint, ErrorKind::kFormat,
              "%s: tensor '%s': %s entry '%s' is not a non-negative 64-bit integer",
              label.c_str(), tensor.c_str(), field,
              v.kind == JsonValue::Kind::kNumber ? v.text.c_str() : json_kind_name(v.kind));
  return v.uint_value;
}

TensorEntry parse_tensor(const std::string& label, const std::string& name, const JsonValue& v) {
  LADLE_CHECK(v.kind == JsonValue::Kind::kObject, ErrorKind::kFormat,
              "%s: tensor '%s': entry is a JSON %s, expected an object", label.c_str(),
              name.c_str(), json_kind_name(v.kind));
  const JsonValue* dtype = nullptr;
  const JsonValue* shape = nullptr;
  const JsonValue* offsets = nullptr;
  for (const auto& [key, value] : v.object) {
    if (key == "dtype") dtype = &value;
    else if (key == "shape") shape = &value;
    else if (key == "data_offsets") offsets = &value;
    else raise(ErrorKind::kFormat, format("%s: tensor '%s': unknown field '%s'", label.c_str(),
                                          name.c_str(), key.c_str()));
  }
  LADLE_CHECK(dtype && shape && offsets, ErrorKind::kFormat,
              "%s: tensor '%s': missing field '%s'", label.c_str(), name.c_str(),
              !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
  TensorEntry t;
  t.name = name;
  LADLE_CHECK(dtype->kind == JsonValue::Kind::kString, ErrorKind::kFormat,
              "%s: tensor '%s': dtype is a JSON %s, expected a string", label.c_str(),
              name.c_str(), json_kind_name(dtype->kind));
  LADLE_CHECK(parse_dtype(dtype->text, &t.dtype), ErrorKind::kFormat,
              "%s: tensor '%s': unknown dtype '%s'", label.c_str(), name.c_str(),
              dtype->text.c_str());
  LADLE_CHECK(shape->kind == JsonValue::Kind::kArray, ErrorKind::kFormat,
              "%s: tensor '%s': shape is a JSON %s, expected an array", label.c_str(),
              name.c_str(), json_kind_name(shape->kind));
  t.n_elems = 1;
  for (const JsonValue& d : shape->array) t.shape.push_back(require_uint(label, name, "shape", d));
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (!mul_overflows(t.n_elems, t.shape[i], &t.n_elems)) continue;
    std::string dims;
    for (size_t k = 0; k < t.shape.size(); ++k)
      dims += (k ? ", " : "") + std::to_string(t.shape[k]);
    raise(ErrorKind::kFormat,
          format("%s: tensor '%s': shape product overflows 64 bits: [%s] at dimension %zu (%llu)",
                 label.c_str(), name.c_str(), dims.c_str(), i,
                 (unsigned long long)t.shape[i]));
  }
  LADLE_CHECK(offsets->kind == JsonValue::Kind::kArray && offsets->array.size() == 2,
              ErrorKind::kFormat, "%s: tensor '%s': data_offsets must be [BEGIN, END]",
              label.c_str(), name.c_str());
  t.begin = require_uint(label, name, "data_offsets", offsets->array[0]);
  t.end = require_uint(label, name, "data_offsets", offsets->array[1]);
  LADLE_CHECK(t.begin <= t.end, ErrorKind::kFormat,
              "%s: tensor '%s': data_offsets [%llu, %llu) end before they begin", label.c_str(),
              name.c_str(), (unsigned long long)t.begin, (unsigned long long)t.end);
  uint64_t expected = tensor_n_bytes(t.dtype, t.n_elems, label + ": tensor '" + name + "'");
  LADLE_CHECK(t.end - t.begin == expected, ErrorKind::kFormat,
              "%s: tensor '%s': data_offsets [%llu, %llu) hold %llu bytes but %s shape needs %llu",
              label.c_str(), name.c_str(), (unsigned long long)t.begin,
              (unsigned long long)t.end, (unsigned long long)(t.end - t.begin),
              dtype_name(t.dtype), (unsigned long long)expected);
  return t;
}

}  // namespace

uint64_t tensor_n_bytes(DType dtype, uint64_t n_elems, const std::string& label) {
  uint64_t bits;
  LADLE_CHECK(!mul_overflows(n_elems, static_cast<uint64_t>(dtype_bits(dtype)), &bits),
              ErrorKind::kFormat, "%s: byte size of %llu %s elements overflows 64 bits",
              label.c_str(), (unsigned long long)n_elems, dtype_name(dtype));
  LADLE_CHECK(bits % 8 == 0, ErrorKind::kFormat,
              "%s: %llu elements of %s do not fill whole bytes", label.c_str(),
              (unsigned long long)n_elems, dtype_name(dtype));
  return bits / 8;
}

Header parse_header(const std::string& label, const std::string& json, uint64_t file_n_bytes) {
  Header h;
  h.header_n_bytes = json.size();
  h.data_start = 8 + json.size();
  h.file_n_bytes = file_n_bytes;
  LADLE_CHECK(!json.empty() && json[0] == '{', ErrorKind::kFormat,
              "%s: header does not start with '{'", label.c_str());
  LADLE_CHECK(file_n_bytes >= h.data_start, ErrorKind::kFormat,
              "%s: header length %llu exceeds the file size %llu (truncated file?)",
              label.c_str(), (unsigned long long)h.header_n_bytes,
              (unsigned long long)file_n_bytes);
  // Trailing space padding is part of the format; JSON whitespace covers it. Each
  // member becomes a TensorEntry as soon as it is parsed: the JSON tree of a
  // header of 10^6 tensors would take ~1 KB per tensor.
  auto on_member = [&](const std::string& key, const JsonValue& value) {
    if (key == "__metadata__") {
      LADLE_CHECK(value.kind == JsonValue::Kind::kObject, ErrorKind::kFormat,
                  "%s: __metadata__ is a JSON %s, expected an object of strings",
                  label.c_str(), json_kind_name(value.kind));
      h.has_metadata = true;
      for (const auto& [mk, mv] : value.object) {
        LADLE_CHECK(mv.kind == JsonValue::Kind::kString, ErrorKind::kFormat,
                    "%s: __metadata__ value of '%s' is a JSON %s, expected a string",
                    label.c_str(), mk.c_str(), json_kind_name(mv.kind));
        h.metadata.emplace_back(mk, mv.text);
      }
      return;
    }
    h.tensors.push_back(parse_tensor(label, key, value));
  };
  std::string error;
  LADLE_CHECK(parse_json_members(json, on_member, &error), ErrorKind::kFormat,
              "%s: header: %s", label.c_str(), error.c_str());
  auto by_offset = [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  };
  if (!std::is_sorted(h.tensors.begin(), h.tensors.end(), by_offset))  // often already in order
    std::stable_sort(h.tensors.begin(), h.tensors.end(), by_offset);
  uint64_t buffer_n_bytes = file_n_bytes - h.data_start;
  uint64_t cursor = 0;
  for (const TensorEntry& t : h.tensors) {
    LADLE_CHECK(t.begin <= cursor, ErrorKind::kFormat,
                "%s: tensor '%s': data_offsets [%llu, %llu) leave a hole after byte %llu",
                label.c_str(), t.name.c_str(), (unsigned long long)t.begin,
                (unsigned long long)t.end, (unsigned long long)cursor);
    LADLE_CHECK(t.begin == cursor, ErrorKind::kFormat,
                "%s: tensor '%s': data_offsets [%llu, %llu) overlap the previous tensor ending "
                "at %llu",
                label.c_str(), t.name.c_str(), (unsigned long long)t.begin,
                (unsigned long long)t.end, (unsigned long long)cursor);
    LADLE_CHECK(t.end <= buffer_n_bytes, ErrorKind::kFormat,
                "%s: tensor '%s': data_offsets [%llu, %llu) exceed the data buffer of %llu bytes "
                "(file size %llu)",
                label.c_str(), t.name.c_str(), (unsigned long long)t.begin,
                (unsigned long long)t.end, (unsigned long long)buffer_n_bytes,
                (unsigned long long)file_n_bytes);
    cursor = t.end;
  }
  LADLE_CHECK(cursor == buffer_n_bytes, ErrorKind::kFormat,
              "%s: tensors cover %llu bytes but the data buffer holds %llu (file size %llu)",
              label.c_str(), (unsigned long long)cursor, (unsigned long long)buffer_n_bytes,
              (unsigned long long)file_n_bytes);
  return h;
}

Header read_header(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LADLE_CHECK(fd >= 0, ErrorKind::kIO, "%s: cannot open: %s", path.c_str(), std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st;
  LADLE_CHECK(::fstat(fd, &st) == 0, ErrorKind::kIO, "%s: cannot stat: %s", path.c_str(),
              std::strerror(errno));
  LADLE_CHECK(S_ISREG(st.st_mode), ErrorKind::kFormat, "%s: not a regular file", path.c_str());
  uint64_t file_n_bytes = static_cast<uint64_t>(st.st_size);
  LADLE_CHECK(file_n_bytes >= 8, ErrorKind::kFormat,
              "%s: truncated: %llu bytes, too short for the 8-byte header length", path.c_str(),
              (unsigned long long)file_n_bytes);
  unsigned char len_bytes[8];
  LADLE_CHECK(::pread(fd, len_bytes, 8, 0) == 8, ErrorKind::kIO, "%s: cannot read: %s",
              path.c_str(), std::strerror(errno));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  LADLE_CHECK(n <= kMaxHeaderBytes, ErrorKind::kFormat,
              "%s: header length %llu exceeds the 100 MB limit", path.c_str(),
              (unsigned long long)n);
  LADLE_CHECK(n <= file_n_bytes - 8, ErrorKind::kFormat,
              "%s: header length %llu exceeds the file size %llu (truncated file?)",
              path.c_str(), (unsigned long long)n, (unsigned long long)file_n_bytes);
  std::string json(static_cast<size_t>(n), '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, json.data() + got, n - got, static_cast<off_t>(8 + got));
    if (r < 0 && errno == EINTR) continue;
    LADLE_CHECK(r > 0, ErrorKind::kIO, "%s: cannot read header: %s", path.c_str(),
                r < 0 ? std::strerror(errno) : "unexpected end of file");
    got += static_cast<size_t>(r);
  }
  return parse_header(path, json, file_n_bytes);
}

std::string serialize_header(const std::vector<TensorEntry>& tensors,
                             const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string json = "{";
  auto check_size = [&](size_t n_tensors_done) {
    LADLE_CHECK(json.size() <= kMaxHeaderBytes, ErrorKind::kValue,
                "header of %zu tensors would be %s%zu bytes, over the safetensors format's limit "
                "of %llu bytes (write a directory output with a smaller max_shard_size, or "
                "fewer tensors per file)", tensors.size(),
                n_tensors_done < tensors.size() ? "more than " : "", json.size(),
                (unsigned long long)kMaxHeaderBytes);
  };
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i) json += ",";
      append_json_quoted(&json, metadata[i].first);
      json += ":";
      append_json_quoted(&json, metadata[i].second);
    }
    json += "}";
    first = false;
  }
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorEntry& t = tensors[k];
    if (!first) json += ",";
    first = false;
    append_json_quoted(&json, t.name);
    json += ":{\"dtype\":\"";
    json += dtype_name(t.dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) json += ",";
      json += std::to_string(t.shape[i]);
    }
    json += "],\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
    if (json.size() > kMaxHeaderBytes) check_size(k + 1);  // stop early, before 10^6 more
  }
  json += "}";
  while ((8 + json.size()) % 8 != 0) json.push_back(' ');
  check_size(tensors.size());
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + json;
}

}  // namespace ladle
