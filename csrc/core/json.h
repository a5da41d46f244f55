// A strict JSON reader and writer for the model file's metadata (`pali.config`).
//
// Why our own: the config is read by C++ (the models) and by Python (the file
// checks), and it comes from files users download, so it is parsed once, here,
// with limits a hostile file cannot get past: nesting deeper than
// kMaxJsonDepth, integers of more than kMaxIntegerDigits digits, invalid UTF-8,
// lone surrogates, duplicate keys and trailing text are errors. Python's
// `json` conventions are kept where files rely on them: NaN, Infinity and
// -Infinity are numbers, and an integer beyond int64 is kept (as a double,
// with `big_integer`) so that a range check can name it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace pali {

// Python's json stops near its recursion limit (1000) too.
inline constexpr int kMaxJsonDepth = 1000;
inline constexpr int kMaxIntegerDigits = 4300;  // Python's int-from-string limit

// Malformed JSON: InvalidArgument, so that a caller can name the file.
class JsonError : public InvalidArgument {
 public:
  enum class Kind { syntax, too_deep };
  JsonError(Kind kind, const std::string& message) : InvalidArgument(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

class Json {
 public:
  enum class Type { null, boolean, integer, number, string, array, object };
  using Members = std::vector<std::pair<std::string, Json>>;

  Json() = default;
  static Json boolean(bool value);
  static Json integer(int64_t value);
  // big_integer: an integer literal beyond int64, held as a double.
  static Json number(double value, bool big_integer = false);
  static Json string(std::string value);
  static Json array(std::vector<Json> items = {});
  static Json object(Members members = {});

  // Throws JsonError.
  static Json parse(std::string_view text);
  // Compact JSON text (NaN and infinities written as Python writes them).
  std::string dump() const;

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_number() const { return type_ == Type::integer || type_ == Type::number; }
  // An integer literal too large for int64 (held as a double).
  bool big_integer() const { return big_integer_; }

  bool as_bool() const { return bool_; }
  int64_t as_int() const { return int_; }
  double as_double() const { return type_ == Type::integer ? static_cast<double>(int_) : number_; }
  const std::string& as_string() const { return string_; }
  const std::vector<Json>& items() const { return items_; }
  const Members& members() const { return members_; }

  // The member named `key`, or nullptr (objects only).
  const Json* find(std::string_view key) const;
  // Appends a member (objects only; the caller keeps keys unique).
  void set(std::string key, Json value);
  void push(Json value) { items_.push_back(std::move(value)); }

  // A short description for an error message: the value itself when short,
  // else what it is ("a list of 3 values", "an object of 2 fields").
  std::string describe() const;

 private:
  Type type_ = Type::null;
  bool bool_ = false;
  bool big_integer_ = false;
  int64_t int_ = 0;
  double number_ = 0;
  std::string string_;
  std::vector<Json> items_;
  Members members_;
};

}  // namespace pali
