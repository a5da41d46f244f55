// Python's repr() and json.dumps() conventions in C++ (see python_format.h).
#include "api/python_format.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>

namespace pali::api {
namespace {

// Decodes one code point at text[i]; returns its length, or 0 for an invalid byte.
size_t decode_utf8(std::string_view text, size_t i, uint32_t* code_point) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  }
  size_t length = 0;
  uint32_t value = 0, minimum = 0;
  if ((lead & 0xE0) == 0xC0) length = 2, value = lead & 0x1F, minimum = 0x80;
  else if ((lead & 0xF0) == 0xE0) length = 3, value = lead & 0x0F, minimum = 0x800;
  else if ((lead & 0xF8) == 0xF0) length = 4, value = lead & 0x07, minimum = 0x10000;
  else return 0;
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    value = (value << 6) | (byte(i + k) & 0x3F);
  }
  if (value < minimum || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 0;
  *code_point = value;
  return length;
}

// The characters str.isprintable() refuses that text is likely to hold:
// controls, format characters, separators other than the space, private use.
bool printable(uint32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x061C || c == 0x1680 || c == 0x180E || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF)
    return false;
  if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202E) || (c >= 0x2060 && c <= 0x206F)) return false;
  if ((c >= 0xE000 && c <= 0xF8FF) || (c >= 0xFFF9 && c <= 0xFFFB) || c >= 0xF0000) return false;
  return true;
}

void append_hex_escape(std::string& out, uint32_t c) {
  char buffer[16];
  if (c < 0x100) std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
  else if (c < 0x10000) std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
  else std::snprintf(buffer, sizeof buffer, "\\U%08x", c);
  out += buffer;
}

}  // namespace

std::string py_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buffer[64];
  const auto written = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  const std::string_view text(buffer, static_cast<size_t>(written.ptr - buffer));
  // text: [-]d[.ddd]e(+|-)XX
  std::string out;
  size_t i = 0;
  if (text[0] == '-') {
    out += '-';
    i = 1;
  }
  const size_t e = text.find('e');
  std::string digits;
  for (size_t k = i; k < e; ++k)
    if (text[k] != '.') digits += text[k];
  int exponent = 0;
  std::from_chars(text.data() + e + (text[e + 1] == '+' ? 2 : 1), text.data() + text.size(), exponent);
  // value = 0.d1d2... x 10^point, as Python's float_repr_style 'short' counts it
  const int point = exponent + 1;
  const int n = static_cast<int>(digits.size());
  if (point <= -4 || point > 16) {
    out += digits[0];
    if (n > 1) out += "." + digits.substr(1);
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + tail;
  }
  if (point <= 0) return out + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  if (point >= n) return out + digits + std::string(static_cast<size_t>(point - n), '0') + ".0";
  return out + digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
}

std::string py_str_repr(std::string_view utf8) {
  // Python picks the quote from the whole text.
  bool has_single = false, has_double = false;
  for (char c : utf8) {
    has_single |= c == '\'';
    has_double |= c == '"';
  }
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (size_t i = 0; i < utf8.size();) {
    uint32_t c = 0;
    const size_t length = decode_utf8(utf8, i, &c);
    if (length == 0) {  // Python's surrogateescape: the byte as a lone surrogate
      append_hex_escape(out, 0xDC00 + static_cast<uint8_t>(utf8[i]));
      ++i;
      continue;
    }
    if (c == static_cast<uint32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (!printable(c)) {
      append_hex_escape(out, c);
    } else {
      out.append(utf8.substr(i, length));
    }
    i += length;
  }
  out += quote;
  return out;
}

std::string py_short_repr(std::string_view utf8, size_t limit) {
  const std::string text = py_str_repr(utf8);
  size_t characters = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) continue;
    if (characters++ == limit) return text.substr(0, i) + "...";
  }
  return text;
}

std::string json_string(std::string_view utf8) {
  std::string out = "\"";
  for (size_t i = 0; i < utf8.size();) {
    uint32_t c = 0;
    const size_t length = decode_utf8(utf8, i, &c);
    if (length == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for a byte that is not UTF-8
      ++i;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
          out += buffer;
        } else {
          out.append(utf8.substr(i, length));
        }
    }
    i += length;
  }
  return out + "\"";
}

std::string json_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value < 0 ? "-Infinity" : "Infinity";
  return py_float_repr(value);
}

size_t utf8_error_offset(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    uint32_t c = 0;
    const size_t length = decode_utf8(text, i, &c);
    if (length == 0) return i;
    i += length;
  }
  return std::string_view::npos;
}

}  // namespace pali::api
