#include "json.h"

#include <functional>
#include <string_view>

#include "common.h"

namespace ladle {
namespace {

class Parser {
 public:
  Parser(const std::string& text, int max_depth) : s_(text), max_depth_(max_depth) {}

  void parse_document(JsonValue* out) {
    skip_ws();
    parse_value(out, 0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the JSON value");
  }

  // The document is one object whose members go to on_member one at a time.
  void parse_document_members(const JsonMemberFn& on_member) {
    skip_ws();
    if (pos_ >= s_.size() || s_[pos_] != '{') fail("expected an object");
    JsonValue root;
    parse_object(&root, 0, &on_member);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the JSON value");
  }

  // Whether the last Error came from fail() (the JSON itself), not from on_member.
  bool json_failed() const { return json_failed_; }

 private:
  [[noreturn]] void fail(const std::string& what) {
    json_failed_ = true;
    raise(ErrorKind::kFormat, format("invalid JSON at byte %zu: %s", pos_, what.c_str()));
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  bool consume(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s_.compare(pos_, n, lit) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  void parse_value(JsonValue* out, int depth) {
    if (depth > max_depth_) fail(format("nesting deeper than %d levels", max_depth_));
    if (pos_ >= s_.size()) fail("unexpected end of input");
    char c = s_[pos_];
    if (c == '{') return parse_object(out, depth);
    if (c == '[') return parse_array(out, depth);
    if (c == '"') {
      out->kind = JsonValue::Kind::kString;
      out->text = parse_string();
      return;
    }
    if (consume("true")) { out->kind = JsonValue::Kind::kBool; out->boolean = true; return; }
    if (consume("false")) { out->kind = JsonValue::Kind::kBool; out->boolean = false; return; }
    if (consume("null")) { out->kind = JsonValue::Kind::kNull; return; }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
    fail(format("unexpected character 0x%02x", static_cast<unsigned char>(c)));
  }

  // Duplicate keys: a linear scan while an object is small (tensor entries have
  // 3 keys); a large one (a header's 10^6 tensor names) is checked once it is
  // complete, with an open-addressing table of member indices (no allocation per key).
  static constexpr size_t kLinearKeys = 8;

  // key_of(i): the i-th of n keys.
  template <typename KeyOf>
  void check_duplicate_keys(size_t n, const KeyOf& key_of) {
    size_t n_slots = 16;
    while (n_slots < 2 * n) n_slots *= 2;
    std::vector<uint32_t> slots(n_slots, 0);  // member index + 1; 0: empty
    std::hash<std::string_view> hash;
    for (size_t i = 0; i < n; ++i) {
      const std::string& key = key_of(i);
      for (size_t at = hash(key) & (n_slots - 1);; at = (at + 1) & (n_slots - 1)) {
        if (slots[at] == 0) {
          slots[at] = static_cast<uint32_t>(i + 1);
          break;
        }
        if (key_of(slots[at] - 1) == key) fail("duplicate key \"" + key + "\"");
      }
    }
  }

  // With on_member, each member is handed over once parsed and not kept in `out`
  // (only its key, for the duplicate check).
  void parse_object(JsonValue* out, int depth, const JsonMemberFn* on_member = nullptr) {
    out->kind = JsonValue::Kind::kObject;
    std::vector<std::string> streamed_keys;
    auto n_keys = [&] { return on_member ? streamed_keys.size() : out->object.size(); };
    auto key_of = [&](size_t i) -> const std::string& {
      return on_member ? streamed_keys[i] : out->object[i].first;
    };
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return; }
    while (true) {
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
      std::string key = parse_string();
      if (n_keys() < kLinearKeys)
        for (size_t i = 0; i < n_keys(); ++i)
          if (key_of(i) == key) fail("duplicate key \"" + key + "\"");
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
      ++pos_;
      skip_ws();
      if (on_member) {
        JsonValue value;
        parse_value(&value, depth + 1);
        (*on_member)(key, value);
        streamed_keys.push_back(std::move(key));
      } else {
        out->object.emplace_back(std::move(key), JsonValue());
        parse_value(&out->object.back().second, depth + 1);
      }
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        if (n_keys() > kLinearKeys) check_duplicate_keys(n_keys(), key_of);
        ++pos_;
        return;
      }
      fail("expected ',' or '}'");
    }
  }

  void parse_array(JsonValue* out, int depth) {
    out->kind = JsonValue::Kind::kArray;
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return; }
    while (true) {
      skip_ws();
      out->array.emplace_back();
      parse_value(&out->array.back(), depth + 1);
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
      if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return; }
      fail("expected ',' or ']'");
    }
  }

  void parse_number(JsonValue* out) {
    size_t start = pos_;
    bool negative = false, integral = true;
    if (s_[pos_] == '-') { negative = true; ++pos_; }
    if (pos_ >= s_.size() || !isdigit(s_[pos_])) fail("malformed number");
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && isdigit(s_[pos_ + 1]))
      fail("number with a leading zero");
    while (pos_ < s_.size() && isdigit(s_[pos_])) ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (pos_ >= s_.size() || !isdigit(s_[pos_])) fail("malformed fraction");
      while (pos_ < s_.size() && isdigit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || !isdigit(s_[pos_])) fail("malformed exponent");
      while (pos_ < s_.size() && isdigit(s_[pos_])) ++pos_;
    }
    out->kind = JsonValue::Kind::kNumber;
    out->text = s_.substr(start, pos_ - start);
    if (integral && !negative) {
      uint64_t v = 0;
      bool overflow = false;
      for (char d : out->text) {
        uint64_t digit = static_cast<uint64_t>(d - '0');
        if (v > (UINT64_MAX - digit) / 10) { overflow = true; break; }
        v = v * 10 + digit;
      }
      out->is_uint = !overflow;
      out->uint_value = v;
    }
  }

  static bool isdigit(char c) { return c >= '0' && c <= '9'; }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  static void append_utf8(std::string* out, unsigned cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // Validates one UTF-8 sequence starting at pos_ and copies it to `out`.
  void copy_utf8_char(std::string* out) {
    auto b = [&](size_t i) { return static_cast<unsigned char>(s_[i]); };
    unsigned char c0 = b(pos_);
    int len;
    unsigned cp;
    if (c0 < 0x80) { len = 1; cp = c0; }
    else if ((c0 & 0xE0) == 0xC0) { len = 2; cp = c0 & 0x1F; }
    else if ((c0 & 0xF0) == 0xE0) { len = 3; cp = c0 & 0x0F; }
    else if ((c0 & 0xF8) == 0xF0) { len = 4; cp = c0 & 0x07; }
    else fail("invalid UTF-8 lead byte");
    if (pos_ + len > s_.size()) fail("truncated UTF-8 sequence");
    for (int i = 1; i < len; ++i) {
      if ((b(pos_ + i) & 0xC0) != 0x80) fail("invalid UTF-8 continuation byte");
      cp = (cp << 6) | (b(pos_ + i) & 0x3F);
    }
    static const unsigned kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len]) fail("overlong UTF-8 encoding");
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8 code point");
    out->append(s_, pos_, static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      size_t run = pos_;  // plain printable ASCII is copied in one go
      while (run < s_.size() && s_[run] != '"' && s_[run] != '\\' &&
             static_cast<unsigned char>(s_[run]) >= 0x20 && static_cast<unsigned char>(s_[run]) < 0x80)
        ++run;
      if (run > pos_) {
        out.append(s_, pos_, run - pos_);
        pos_ = run;
        continue;
      }
      char c = s_[pos_];
      if (c == '"') { ++pos_; return out; }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') { copy_utf8_char(&out); continue; }
      ++pos_;
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!consume("\\u")) fail("unpaired surrogate in \\u escape");
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate in \\u escape");
          }
          append_utf8(&out, cp);
          break;
        }
        default: fail("invalid escape character");
      }
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
  int max_depth_;
  bool json_failed_ = false;
};

}  // namespace

bool parse_json(const std::string& text, JsonValue* out, std::string* error, int max_depth) {
  try {
    Parser(text, max_depth).parse_document(out);
    return true;
  } catch (const Error& e) {
    *error = e.what();
    return false;
  }
}

bool parse_json_members(const std::string& text, const JsonMemberFn& on_member,
                        std::string* error, int max_depth) {
  Parser parser(text, max_depth);
  try {
    parser.parse_document_members(on_member);
    return true;
  } catch (const Error& e) {
    if (!parser.json_failed()) throw;  // on_member's own error
    *error = e.what();
    return false;
  }
}

std::string json_quote(const std::string& s) {
  std::string out;
  append_json_quoted(&out, s);
  return out;
}

void append_json_quoted(std::string* out, const std::string& s) {
  out->push_back('"');
  size_t run = 0;  // start of the pending run of characters that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s, run, i - run);
    run = i + 1;
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default: *out += format("\\u%04x", c);
    }
  }
  out->append(s, run, s.size() - run);
  out->push_back('"');
}

const char* json_kind_name(JsonValue::Kind kind) {
  switch (kind) {
    case JsonValue::Kind::kNull: return "null";
    case JsonValue::Kind::kBool: return "boolean";
    case JsonValue::Kind::kNumber: return "number";
    case JsonValue::Kind::kString: return "string";
    case JsonValue::Kind::kArray: return "array";
    case JsonValue::Kind::kObject: return "object";
  }
  return "?";
}

}  // namespace ladle
