// Errors: every failure in the engine is a C++ exception, never an abort.
//
// InvalidArgument  -> Python ValueError      (bad input from the caller)
// ModelFileError   -> pali_engine.ModelFileError (a ValueError naming the file)
// OutOfMemory      -> Python MemoryError     (a request too large for this machine)
// RuntimeFailure   -> Python RuntimeError    (anything else; says what and where)
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace pali {

class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class ModelFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class RuntimeFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The engine has as many requests waiting as it accepts: retry later.
class EngineBusy : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append(out, rest...);
}
}  // namespace detail

// Joins any streamable values into one message.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  detail::append(out, args...);
  return out.str();
}

}  // namespace pali

// Caller passed something wrong: raise ValueError with the message.
#define PALI_CHECK_ARG(cond, ...) \
  do {                            \
    if (!(cond)) throw ::pali::InvalidArgument(::pali::str_cat(__VA_ARGS__)); \
  } while (0)

// An internal invariant failed: raise RuntimeError with the message and the place.
#define PALI_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond))                                                                       \
      throw ::pali::RuntimeFailure(::pali::str_cat(__VA_ARGS__, " (", __FILE__, ":", \
                                                   __LINE__, ")"));                    \
  } while (0)
