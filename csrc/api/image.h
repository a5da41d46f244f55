// Images inside the C++ API: decoded pixels, and the steps of each
// architecture's preprocessing, reproduced from the Python package so that
// the model sees the same numbers.
//
//   "pali"       pali_engine/image.py: RGB (transparency composited on white,
//                rounded in integers), pad to a square with the border's median
//                colour (or stretch), PIL resize, (x / 255 - mean) / std in float32
//   "paligemma"  pali_engine/paligemma_processor.py (SiglipImageProcessor): RGB
//                (PIL's alpha_composite for files, NumPy's rounding for arrays),
//                PIL resize to the square, x * rescale_factor in float64, then
//                (x - mean) / std in float32
//
// PIL's Image.resize is reproduced bit for bit (resample.cc).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pali_engine/pali_engine.hpp"

namespace pali_engine {

struct Image::Pixels {
  int width = 0, height = 0, channels = 3;  // 3 (RGB) or 4 (RGBA)
  bool from_file = false;
  std::vector<uint8_t> bytes;  // height x width x channels
};

}  // namespace pali_engine

namespace pali::api {

using pali_engine::Resample;

// 8-bit RGB, rows one after the other.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// A PNG or JPEG file decoded as PIL decodes it; InvalidArgument with the
// Python package's messages when the path or the file cannot be read.
pali_engine::Image::Pixels decode_image_file(const std::string& path);

// RGB for a "pali" model: transparency composited on white as
// image.py's _composite_on_white rounds it.
RgbImage rgb_for_pali(const pali_engine::Image::Pixels& image);
// RGB for a "paligemma" model: transparency composited on white as PIL's
// alpha_composite (an image from a file) or NumPy (pixels from an array).
RgbImage rgb_for_siglip(const pali_engine::Image::Pixels& image);

// Centred on a square filled with the (rounded) median colour of its border.
RgbImage pad_to_square(const RgbImage& image);

// PIL's Image.resize((width, height), resample) of an RGB image, bit for bit.
RgbImage pil_resize(const RgbImage& image, int width, int height, Resample resample);

Resample resample_from_name(const std::string& name);

}  // namespace pali::api
