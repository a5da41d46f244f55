// Detection and segmentation answers read as Python's regular expressions
// read them (answers.h). Digits are ASCII: the model writes its location and
// mask tokens in ASCII, and Python's \d would add only other scripts' digits.
#include "api/answers.h"

#include <algorithm>
#include <cstdint>
#include <string>

namespace pali::api {
namespace {

// Python's str.isspace() (what \s and str.strip() take), at text[i]: its length in bytes, or 0.
size_t space_at(std::string_view text, size_t i) {
  const auto c = static_cast<uint8_t>(text[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  const auto starts = [&](std::string_view bytes) { return text.substr(i, bytes.size()) == bytes; };
  if (starts("\xC2\x85") || starts("\xC2\xA0")) return 2;  // U+0085, U+00A0
  if (starts("\xE1\x9A\x80") || starts("\xE2\x80\xA8") || starts("\xE2\x80\xA9") || starts("\xE2\x80\xAF") ||
      starts("\xE2\x81\x9F") || starts("\xE3\x80\x80"))  // U+1680, U+2028, U+2029, U+202F, U+205F, U+3000
    return 3;
  if (text.size() >= i + 3 && c == 0xE2 && static_cast<uint8_t>(text[i + 1]) == 0x80 &&
      static_cast<uint8_t>(text[i + 2]) >= 0x80 && static_cast<uint8_t>(text[i + 2]) <= 0x8A)  // U+2000..U+200A
    return 3;
  return 0;
}

size_t skip_spaces(std::string_view text, size_t i) {
  while (i < text.size()) {
    const size_t n = space_at(text, i);
    if (n == 0) break;
    i += n;
  }
  return i;
}

std::string strip(std::string_view text) {
  const size_t begin = skip_spaces(text, 0);
  size_t end = begin;
  // The end of the last character that is not a space.
  for (size_t i = begin; i < text.size();) {
    const size_t n = space_at(text, i);
    if (n == 0) {
      ++i;
      while (i < text.size() && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) ++i;
      end = i;
    } else {
      i += n;
    }
  }
  return std::string(text.substr(begin, end - begin));
}

// `<NAME` + `digits` digits + `>` at text[i]: the number, with *end past it; -1 when absent.
int numbered_token(std::string_view text, size_t i, std::string_view name, size_t digits, size_t* end) {
  const size_t length = 1 + name.size() + digits + 1;
  if (text.size() < i + length || text[i] != '<' || text.substr(i + 1, name.size()) != name ||
      text[i + length - 1] != '>')
    return -1;
  int value = 0;
  for (size_t k = i + 1 + name.size(); k < i + length - 1; ++k) {
    if (text[k] < '0' || text[k] > '9') return -1;
    value = value * 10 + (text[k] - '0');
  }
  *end = i + length;
  return value;
}

// Four <locNNNN> tokens at text[i] (y0, x0, y1, x1), with *end past them.
bool four_locations(std::string_view text, size_t i, int locations[4], size_t* end) {
  for (int k = 0; k < 4; ++k) {
    locations[k] = numbered_token(text, i, "loc", 4, &i);
    if (locations[k] < 0) return false;
  }
  *end = i;
  return true;
}

// [^;<]*: the label runs to the next ';' or '<'.
size_t label_end(std::string_view text, size_t i) {
  const size_t stop = text.find_first_of(";<", i);
  return stop == std::string_view::npos ? text.size() : stop;
}

}  // namespace

std::vector<pali_engine::Object> parse_detections(std::string_view text, int width, int height,
                                                  pali_engine::Resize resize) {
  // square_frame(): the square a padded image was centred on, or the image itself.
  int frame_w = width, frame_h = height, offset_x = 0, offset_y = 0;
  if (resize == pali_engine::Resize::pad && width != height) {
    const int side = std::max(width, height);
    frame_w = frame_h = side;
    offset_x = (side - width) / 2;
    offset_y = (side - height) / 2;
  }
  const auto to_image = [](double fraction, int frame, int offset, int side) {
    return std::min(1.0, std::max(0.0, (fraction * frame - offset) / side));
  };
  std::vector<pali_engine::Object> objects;
  for (size_t i = 0; i < text.size();) {
    int loc[4];
    size_t end = 0;
    if (text[i] != '<' || !four_locations(text, i, loc, &end)) {
      ++i;
      continue;
    }
    const double y0 = loc[0] / 1023.0, x0 = loc[1] / 1023.0, y1 = loc[2] / 1023.0, x1 = loc[3] / 1023.0;
    const size_t label_begin = skip_spaces(text, end);
    const size_t stop = label_end(text, label_begin);
    pali_engine::Object object;
    object.x0 = to_image(x0, frame_w, offset_x, width) * width;
    object.y0 = to_image(y0, frame_h, offset_y, height) * height;
    object.x1 = to_image(x1, frame_w, offset_x, width) * width;
    object.y1 = to_image(y1, frame_h, offset_y, height) * height;
    object.label = strip(text.substr(label_begin, stop - label_begin));
    objects.push_back(std::move(object));
    i = std::max(stop, i + 1);
  }
  return objects;
}

std::vector<pali_engine::Object> parse_segmentation(std::string_view text, int width, int height) {
  constexpr int kBins = 1024, kCodes = 16;
  std::vector<pali_engine::Object> objects;
  for (size_t i = 0; i < text.size();) {
    int loc[4];
    size_t end = 0;
    if (text[i] != '<' || !four_locations(text, i, loc, &end)) {
      ++i;
      continue;
    }
    size_t position = skip_spaces(text, end);
    // ((?:<segNNN>\s*){16})? : all sixteen codes, or none of them.
    std::vector<int> codes;
    size_t after_codes = position;
    for (int k = 0; k < kCodes; ++k) {
      const int code = numbered_token(text, after_codes, "seg", 3, &after_codes);
      if (code < 0) break;
      codes.push_back(code);
      after_codes = skip_spaces(text, after_codes);
    }
    if (static_cast<int>(codes.size()) == kCodes) position = after_codes;
    else codes.clear();
    const size_t stop = label_end(text, position);
    pali_engine::Object object;
    object.x0 = static_cast<double>(loc[1]) / kBins * width;
    object.y0 = static_cast<double>(loc[0]) / kBins * height;
    object.x1 = static_cast<double>(loc[3]) / kBins * width;
    object.y1 = static_cast<double>(loc[2]) / kBins * height;
    object.label = strip(text.substr(position, stop - position));
    object.codes = std::move(codes);
    objects.push_back(std::move(object));
    i = std::max(stop, i + 1);
  }
  return objects;
}

}  // namespace pali::api
