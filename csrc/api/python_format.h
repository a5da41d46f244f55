// Values written as Python writes them: repr() of floats and strings, and
// json.dumps(..., ensure_ascii=False) of strings and numbers.
//
// Why: the C++ API's error messages and pali-run's JSON must read exactly as
// the Python package's, which put repr() of the caller's values in messages
// and print results with json.dumps.
#pragma once

#include <string>
#include <string_view>

namespace pali::api {

// repr(float(value)): the shortest digits that read back as the same double,
// fixed notation from 1e-4 up to 1e16 ("0.0001", "1.0", "1234.5"), else
// exponent notation ("1e-05", "1.5e+16"); "inf", "-inf", "nan".
std::string py_float_repr(double value);

// repr(str): single quotes unless the text holds ' and no ", with Python's
// escapes (\\, \n, \t, \xNN for control characters, ...). Bytes that are not
// UTF-8 read as Python's surrogate escapes (\udcNN).
std::string py_str_repr(std::string_view utf8);

// errors.short_repr of a str: its repr, cut to `limit` characters and "..." when longer.
std::string py_short_repr(std::string_view utf8, size_t limit = 60);

// json.dumps of a str with ensure_ascii=False.
std::string json_string(std::string_view utf8);

// json.dumps of a float: its repr, or NaN / Infinity / -Infinity.
std::string json_number(double value);

// The offset of the first byte of `text` that is not well-formed UTF-8 (an
// overlong form, a surrogate, past U+10FFFF, cut short), or npos.
size_t utf8_error_offset(std::string_view text);

}  // namespace pali::api
