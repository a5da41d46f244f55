#include "core/json.h"

#include <charconv>
#include <cmath>
#include <limits>

namespace pali {

Json Json::boolean(bool value) {
  Json j;
  j.type_ = Type::boolean;
  j.bool_ = value;
  return j;
}

Json Json::integer(int64_t value) {
  Json j;
  j.type_ = Type::integer;
  j.int_ = value;
  return j;
}

Json Json::number(double value, bool big_integer) {
  Json j;
  j.type_ = Type::number;
  j.number_ = value;
  j.big_integer_ = big_integer;
  return j;
}

Json Json::string(std::string value) {
  Json j;
  j.type_ = Type::string;
  j.string_ = std::move(value);
  return j;
}

Json Json::array(std::vector<Json> items) {
  Json j;
  j.type_ = Type::array;
  j.items_ = std::move(items);
  return j;
}

Json Json::object(Members members) {
  Json j;
  j.type_ = Type::object;
  j.members_ = std::move(members);
  return j;
}

const Json* Json::find(std::string_view key) const {
  for (const auto& [name, value] : members_)
    if (name == key) return &value;
  return nullptr;
}

void Json::set(std::string key, Json value) { members_.emplace_back(std::move(key), std::move(value)); }

namespace {

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json document() {
    skip_space();
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("extra data after the value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw JsonError(JsonError::Kind::syntax, str_cat("is not valid JSON: ", what, " at character ", pos_));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_space() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json parse_value(int depth) {
    if (depth >= kMaxJsonDepth)
      throw JsonError(JsonError::Kind::too_deep,
                      str_cat("is nested too deeply (more than ", kMaxJsonDepth, " levels of lists and objects)"));
    const char c = peek();
    if (c == '{') return parse_object(depth + 1);
    if (c == '[') return parse_array(depth + 1);
    if (c == '"') return Json::string(parse_string());
    if (consume("true")) return Json::boolean(true);
    if (consume("false")) return Json::boolean(false);
    if (consume("null")) return Json();
    if (consume("NaN")) return Json::number(std::numeric_limits<double>::quiet_NaN());
    if (consume("Infinity")) return Json::number(std::numeric_limits<double>::infinity());
    if (consume("-Infinity")) return Json::number(-std::numeric_limits<double>::infinity());
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    if (at_end()) fail("the text ends where a value should be");
    fail("a value was expected");
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json object = Json::object();
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return object;
    }
    while (true) {
      skip_space();
      if (peek() != '"') fail("a quoted key was expected");
      std::string key = parse_string();
      if (object.find(key)) fail(str_cat("the key '", key.substr(0, 40), "' appears twice"));
      skip_space();
      if (peek() != ':') fail("':' was expected");
      ++pos_;
      skip_space();
      Json value = parse_value(depth);
      object.set(std::move(key), std::move(value));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return object;
      }
      fail("',' or '}' was expected");
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json array = Json::array();
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return array;
    }
    while (true) {
      skip_space();
      array.push(parse_value(depth));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return array;
      }
      fail("',' or ']' was expected");
    }
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t hex4() {
    if (pos_ + 4 > text_.size()) fail("a \\u escape needs four hex digits");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      value <<= 4;
      if (h >= '0' && h <= '9') value |= h - '0';
      else if (h >= 'a' && h <= 'f') value |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') value |= h - 'A' + 10;
      else fail("a \\u escape needs four hex digits");
    }
    return value;
  }

  // One UTF-8 encoded character starting at pos_, copied to out (refused when malformed).
  void copy_utf8(std::string& out) {
    const auto lead = static_cast<unsigned char>(text_[pos_]);
    int extra = 0;
    uint32_t cp = 0, min = 0;
    if (lead >= 0xC2 && lead <= 0xDF) extra = 1, cp = lead & 0x1F, min = 0x80;
    else if (lead >= 0xE0 && lead <= 0xEF) extra = 2, cp = lead & 0x0F, min = 0x800;
    else if (lead >= 0xF0 && lead <= 0xF4) extra = 3, cp = lead & 0x07, min = 0x10000;
    else fail("invalid UTF-8");
    if (pos_ + extra >= text_.size()) fail("invalid UTF-8");
    for (int i = 1; i <= extra; ++i) {
      const auto next = static_cast<unsigned char>(text_[pos_ + i]);
      if ((next & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (next & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8");
    out.append(text_.substr(pos_, extra + 1));
    pos_ += extra + 1;
  }

  std::string parse_string() {
    ++pos_;  // '"'
    std::string out;
    while (true) {
      if (at_end()) fail("a string is not closed");
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("a control character inside a string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (at_end()) fail("a string is not closed");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("a lone surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!consume("\\u")) fail("a lone surrogate in a \\u escape");
            const uint32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("a lone surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("an unknown escape in a string");
      }
    }
  }

  Json parse_number() {
    const size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      fail("a digit was expected");
    }
    bool integral = true;
    if (peek() == '.') {
      integral = false;
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("a digit was expected after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("a digit was expected in the exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    if (integral) {
      const size_t digits = literal.size() - (literal[0] == '-' ? 1 : 0);
      if (digits > static_cast<size_t>(kMaxIntegerDigits))
        fail(str_cat("an integer of more than ", kMaxIntegerDigits, " digits"));
      int64_t value = 0;
      const auto [end, error] = std::from_chars(literal.data(), literal.data() + literal.size(), value);
      if (error == std::errc() && end == literal.data() + literal.size()) return Json::integer(value);
    }
    double value = 0;
    const auto [end, error] = std::from_chars(literal.data(), literal.data() + literal.size(), value);
    if (error == std::errc::result_out_of_range) {
      // Python reads 1e400 as inf and 1e-400 as 0.0.
      const bool negative_exponent = literal.find("e-") != std::string_view::npos ||
                                     literal.find("E-") != std::string_view::npos;
      value = negative_exponent ? 0.0 : std::numeric_limits<double>::infinity();
      if (literal[0] == '-') value = -value;
    } else if (error != std::errc() || end != literal.data() + literal.size()) {
      fail("a malformed number");
    }
    return Json::number(value, integral);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

std::string format_double(double value, bool for_json) {
  if (std::isnan(value)) return for_json ? "NaN" : "nan";
  if (std::isinf(value)) return value > 0 ? (for_json ? "Infinity" : "inf") : (for_json ? "-Infinity" : "-inf");
  char buffer[32];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, error == std::errc() ? end : buffer);
  // Keep it a float when read back (Python writes 1.0, not 1).
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

void quote(std::string& out, const std::string& text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char* hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void dump_to(std::string& out, const Json& j) {
  switch (j.type()) {
    case Json::Type::null: out += "null"; break;
    case Json::Type::boolean: out += j.as_bool() ? "true" : "false"; break;
    case Json::Type::integer: out += std::to_string(j.as_int()); break;
    case Json::Type::number: out += format_double(j.as_double(), true); break;
    case Json::Type::string: quote(out, j.as_string()); break;
    case Json::Type::array: {
      out += '[';
      for (size_t i = 0; i < j.items().size(); ++i) {
        if (i) out += ", ";
        dump_to(out, j.items()[i]);
      }
      out += ']';
      break;
    }
    case Json::Type::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, value] : j.members()) {
        if (!first) out += ", ";
        first = false;
        quote(out, key);
        out += ": ";
        dump_to(out, value);
      }
      out += '}';
      break;
    }
  }
}

}  // namespace

Json Json::parse(std::string_view text) { return Parser(text).document(); }

std::string Json::dump() const {
  std::string out;
  dump_to(out, *this);
  return out;
}

std::string Json::describe() const {
  switch (type_) {
    case Type::null: return "null";
    case Type::boolean: return bool_ ? "true" : "false";
    case Type::integer: return std::to_string(int_);
    case Type::number: {
      if (big_integer_) return "an integer beyond 64 bits";
      return format_double(number_, false);
    }
    case Type::string: {
      std::string text = string_.size() > 40 ? string_.substr(0, 40) + "..." : string_;
      std::string out = "'";
      for (const char c : text) out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
      return out + "'";
    }
    case Type::array: return str_cat("a list of ", items_.size(), " values");
    case Type::object: return str_cat("an object of ", members_.size(), " fields");
  }
  return "?";
}

}  // namespace pali
