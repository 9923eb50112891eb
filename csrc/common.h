// Error type shared by the whole core and the LADLE_CHECK macro that raises it
// with a formatted message; the binding layer maps ErrorKind to Python classes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>

namespace ladle {

enum class ErrorKind {
  kFormat,     // malformed input file (header, offsets, sizes)
  kMismatch,   // inputs disagree (keys, shapes, dtypes, pass-through values)
  kIO,         // the operating system refused (open, read, write, disk full)
  kValue,      // a caller-supplied argument is invalid
  kNonFinite,  // check_finite found NaN/Inf
  kCancelled,  // the run was interrupted
  kBackend,    // backend (e.g. CUDA) failure
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, int os_errno = 0, const char* file = "",
        int line = 0)
      : std::runtime_error(std::move(message)), kind_(kind), os_errno_(os_errno), file_(file),
        line_(line) {}
  ErrorKind kind() const { return kind_; }
  int os_errno() const { return os_errno_; }
  // Where in the C++ source the error was raised ("" / 0 when not by LADLE_CHECK).
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  ErrorKind kind_;
  int os_errno_;
  const char* file_;
  int line_;
};

// printf-style formatting into std::string (the core has no fmt dependency).
template <typename... Args>
std::string format(const char* fmt, Args... args) {
  int n = std::snprintf(nullptr, 0, fmt, args...);
  if (n <= 0) return std::string(fmt);
  std::string out(static_cast<size_t>(n) + 1, '\0');
  std::snprintf(out.data(), out.size(), fmt, args...);
  out.resize(static_cast<size_t>(n));
  return out;
}

[[noreturn]] inline void raise(ErrorKind kind, const std::string& message, int os_errno = 0) {
  throw Error(kind, message, os_errno);
}

[[noreturn]] inline void raise_at(const char* file, int line, ErrorKind kind,
                                  const std::string& message) {
  throw Error(kind, message, 0, file, line);
}

}  // namespace ladle

// Raise ladle::Error of `kind` with a printf-formatted message when `cond` fails,
// recording the check's file:line (Python: the exception's `cpp_location`).
#define LADLE_CHECK(cond, kind, ...)                                                     \
  do {                                                                                   \
    if (!(cond)) ::ladle::raise_at(__FILE__, __LINE__, (kind), ::ladle::format(__VA_ARGS__)); \
  } while (0)
