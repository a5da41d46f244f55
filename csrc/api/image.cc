// pali_engine::Image and the preprocessing steps of each architecture (image.h).
//
// Compiled without floating-point contraction: the normalisations must round
// after each multiply as NumPy does, not fuse it with the following add.
#include "api/image.h"

#include <cmath>
#include <cstring>

#include "api/python_format.h"
#include "api/translate.h"
#include "core/error.h"

namespace pali_engine {

namespace {

std::string shape_text(int height, int width, int channels) {
  return pali::str_cat("(", height, ", ", width, ", ", channels, ")");
}

}  // namespace

Image Image::from_file(const std::string& path) {
  return pali::api::translated(
      [&] { return Image(std::make_shared<const Pixels>(pali::api::decode_image_file(path))); });
}

Image Image::from_pixels(int width, int height, int channels, const uint8_t* pixels) {
  return pali::api::translated([&] { return from_array(width, height, channels, pixels); });
}

Image Image::from_array(int width, int height, int channels, const uint8_t* pixels) {
  // image.py's checks of a uint8 array of shape (height, width, channels).
  if (channels != 1 && channels != 3 && channels != 4)
    throw pali::InvalidArgument(pali::str_cat("image array must have 1, 3 or 4 channels, got ", channels,
                                              " (shape ", shape_text(height, width, channels), ")"));
  if (width <= 0 || height <= 0)
    throw pali::InvalidArgument(
        pali::str_cat("empty image array of shape ", shape_text(std::max(height, 0), std::max(width, 0), channels)));
  PALI_CHECK_ARG(pixels != nullptr, "image pixels must not be null");
  auto image = std::make_shared<Pixels>();
  image->width = width;
  image->height = height;
  image->channels = channels == 4 ? 4 : 3;
  const size_t count = static_cast<size_t>(width) * height;
  if (channels == 1) {
    image->bytes.resize(count * 3);
    for (size_t i = 0; i < count; ++i) image->bytes[3 * i] = image->bytes[3 * i + 1] = image->bytes[3 * i + 2] = pixels[i];
  } else {
    image->bytes.assign(pixels, pixels + count * channels);
  }
  return Image(std::move(image));
}

Image Image::from_rgb(int width, int height, const uint8_t* rgb) { return from_pixels(width, height, 3, rgb); }

Image Image::from_rgb(int width, int height, const std::vector<uint8_t>& rgb) {
  return pali::api::translated([&] {
    const size_t expected = static_cast<size_t>(std::max(width, 0)) * static_cast<size_t>(std::max(height, 0)) * 3;
    PALI_CHECK_ARG(rgb.size() == expected, "an RGB image of ", width, "x", height, " pixels has ", expected,
                   " bytes, got ", rgb.size());
    return from_array(width, height, 3, rgb.data());
  });
}

int Image::width() const { return pixels_->width; }
int Image::height() const { return pixels_->height; }
int Image::channels() const { return pixels_->channels; }
const uint8_t* Image::data() const { return pixels_->bytes.data(); }
bool Image::decoded_from_file() const { return pixels_->from_file; }

}  // namespace pali_engine

namespace pali::api {

namespace {

RgbImage copy_rgb(const pali_engine::Image::Pixels& image) {
  return RgbImage{image.width, image.height, image.bytes};
}

}  // namespace

RgbImage rgb_for_pali(const pali_engine::Image::Pixels& image) {
  if (image.channels == 3) return copy_rgb(image);
  RgbImage out{image.width, image.height, std::vector<uint8_t>(static_cast<size_t>(image.width) * image.height * 3)};
  const size_t count = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t alpha = image.bytes[4 * i + 3];
    for (int c = 0; c < 3; ++c) {
      const uint32_t mixed = image.bytes[4 * i + c] * alpha + 255 * (255 - alpha);
      out.rgb[3 * i + c] = static_cast<uint8_t>((mixed + 127) / 255);
    }
  }
  return out;
}

RgbImage rgb_for_siglip(const pali_engine::Image::Pixels& image) {
  if (image.channels == 3) return copy_rgb(image);
  RgbImage out{image.width, image.height, std::vector<uint8_t>(static_cast<size_t>(image.width) * image.height * 3)};
  const size_t count = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* p = image.bytes.data() + 4 * i;
    const uint32_t a = p[3];
    for (int c = 0; c < 3; ++c) {
      if (image.from_file) {
        // PIL's ImagingAlphaComposite of the pixel over opaque white (7 extra bits of precision).
        if (a == 0) {
          out.rgb[3 * i + c] = 255;
          continue;
        }
        constexpr uint32_t kBits = 7;
        const uint32_t blend = 255 * (255 - a);
        const uint32_t outa255 = a * 255 + blend;
        const uint32_t coef1 = a * 255 * 255 * (1u << kBits) / outa255;
        const uint32_t coef2 = 255 * (1u << kBits) - coef1;
        const uint32_t mixed = p[c] * coef1 + 255 * coef2 + (0x80u << kBits);
        out.rgb[3 * i + c] = static_cast<uint8_t>((((mixed >> 8) + mixed) >> 8) >> kBits);
      } else {
        // paligemma_processor.py: np.round(alpha * rgb + (1 - alpha) * 255) in float64.
        const double alpha = a / 255.0;
        const double mixed = alpha * p[c] + (1 - alpha) * 255;
        out.rgb[3 * i + c] = static_cast<uint8_t>(std::nearbyint(mixed));
      }
    }
  }
  return out;
}

RgbImage pad_to_square(const RgbImage& image) {
  const int w = image.width, h = image.height;
  if (w == h) return image;
  const int side = std::max(w, h);
  const int x0 = (side - w) / 2, y0 = (side - h) / 2;
  // np.median over the border (first row, last row, first column, last column):
  // an even count, so the mean of the two middle values, rounded half to even.
  uint8_t fill[3];
  for (int c = 0; c < 3; ++c) {
    int64_t histogram[256] = {0};
    const auto at = [&](int x, int y) { return image.rgb[(static_cast<size_t>(y) * w + x) * 3 + c]; };
    for (int x = 0; x < w; ++x) ++histogram[at(x, 0)], ++histogram[at(x, h - 1)];
    for (int y = 0; y < h; ++y) ++histogram[at(0, y)], ++histogram[at(w - 1, y)];
    const int64_t n = 2 * static_cast<int64_t>(w) + 2 * static_cast<int64_t>(h);
    const auto kth = [&](int64_t k) {
      int64_t seen = 0;
      for (int v = 0; v < 256; ++v) {
        seen += histogram[v];
        if (seen > k) return v;
      }
      return 255;
    };
    const int sum = kth(n / 2 - 1) + kth(n / 2);
    const int half = sum / 2;
    fill[c] = static_cast<uint8_t>(sum % 2 == 0 || half % 2 == 0 ? half : half + 1);
  }
  RgbImage out{side, side, std::vector<uint8_t>(static_cast<size_t>(side) * side * 3)};
  for (size_t i = 0; i < out.rgb.size(); i += 3) std::memcpy(&out.rgb[i], fill, 3);
  for (int y = 0; y < h; ++y)
    std::memcpy(&out.rgb[(static_cast<size_t>(y + y0) * side + x0) * 3], &image.rgb[static_cast<size_t>(y) * w * 3],
                static_cast<size_t>(w) * 3);
  return out;
}

}  // namespace pali::api

namespace pali_engine {

std::vector<uint8_t> fit_to_input(const Image& image, int size, Resample resample, Resize resize) {
  return pali::api::translated([&] {
    PALI_CHECK_ARG(size > 0, "the input size must be positive, got ", size);
    PALI_CHECK_ARG(resize != Resize::model_default, "fit_to_input takes resize pad or stretch");
    pali::api::RgbImage rgb = pali::api::rgb_for_pali(image.pixels());
    if (resize == Resize::pad) rgb = pali::api::pad_to_square(rgb);
    return pali::api::pil_resize(rgb, size, size, resample).rgb;
  });
}

std::vector<float> preprocess(const Image& image, int size, const std::vector<float>& mean,
                              const std::vector<float>& std, Resample resample, Resize resize) {
  if (mean.size() != 3 || std.size() != 3)
    throw Error(ErrorKind::invalid_argument, "mean and std must have 3 values (R, G, B)");
  const std::vector<uint8_t> pixels = fit_to_input(image, size, resample, resize);
  const size_t plane = static_cast<size_t>(size) * size;
  std::vector<float> out(3 * plane);
  const float scale = static_cast<float>(1.0 / 255.0);
  for (int c = 0; c < 3; ++c)
    for (size_t i = 0; i < plane; ++i) {
      float x = static_cast<float>(pixels[3 * i + c]) * scale;
      x -= mean[c];
      x /= std[c];
      out[c * plane + i] = x;
    }
  return out;
}

}  // namespace pali_engine
