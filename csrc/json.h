// A small strict JSON reader for safetensors headers: UTF-8 validated, duplicate
// keys and excessive nesting rejected, integers kept exact as uint64.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ladle {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  bool is_uint = false;      // number is a non-negative integer that fits uint64
  uint64_t uint_value = 0;
  std::string text;          // string value, or the number's literal text
  std::vector<JsonValue> array;
  // Object members in file order (order matters for error messages only).
  std::vector<std::pair<std::string, JsonValue>> object;
};

// Parses `text` (exactly one JSON value, surrounding whitespace allowed). On
// error returns false and sets `error` to a message with the byte position.
bool parse_json(const std::string& text, JsonValue* out, std::string* error,
                int max_depth = 64);

// Called with each member (key, value) of a streamed object.
using JsonMemberFn = std::function<void(const std::string&, const JsonValue&)>;

// Parses `text`, one JSON object, handing each of its members to on_member as
// soon as it is parsed and then dropping it, so a header of 10^6 tensors never
// exists as one tree. The checks are parse_json's (duplicate keys included);
// members before a JSON error have been handed over. A JSON error returns false
// with `error` set; an error raised by on_member propagates unchanged.
bool parse_json_members(const std::string& text, const JsonMemberFn& on_member,
                        std::string* error, int max_depth = 64);

// Serialises a string as a JSON string literal (quotes and escapes).
std::string json_quote(const std::string& s);
// The same, appended to `out` (no temporary: headers may hold 10^6 names).
void append_json_quoted(std::string* out, const std::string& s);

const char* json_kind_name(JsonValue::Kind kind);

}  // namespace ladle
