// PIL's Image.resize for RGB images, reproduced bit for bit.
//
// Why: the model was trained and is tested on pixels made by PIL, and a
// resize that differs by one level in a few pixels changes logits beyond the
// engine's tolerance. PIL (src/libImaging/Resample.c) resizes in two separable
// passes (horizontal, then vertical) with a filter whose support grows with
// the downscale factor; the weights of each output pixel are computed in
// double, normalised to sum to 1, then turned into fixed point with 22
// fractional bits, and each pass rounds and clips to uint8. NEAREST is not a
// convolution there but an affine scale (src/libImaging/Geometry.c,
// ImagingScaleAffine) whose source positions accumulate in double.
//
// This file is compiled without floating-point contraction: a fused
// multiply-add would round the weights differently from PIL's build.
#include <cmath>
#include <cstdint>
#include <vector>

#include "api/image.h"
#include "core/error.h"

namespace pali::api {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double box_filter(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

Filter filter_of(Resample resample) {
  switch (resample) {
    case Resample::bilinear: return {bilinear_filter, 1.0};
    case Resample::bicubic: return {bicubic_filter, 2.0};
    case Resample::lanczos: return {lanczos_filter, 3.0};
    case Resample::nearest: break;
  }
  return {box_filter, 0.5};
}

// Each output pixel's first input pixel, count, and fixed-point weights
// (PIL's precompute_coeffs and normalize_coeffs_8bpc).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out_size, ksize]
};

Coefficients precompute(int in_size, int out_size, const Filter& filter) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.weight((x + xmin - center + 0.5) * inv_filterscale);
      k[x] = w;
      ww += w;
    }
    if (ww != 0.0)
      for (int x = 0; x < xmax; ++x) k[x] /= ww;
    for (int x = 0; x < xmax; ++x) {
      const double scaled = k[x] * (1 << kPrecisionBits);
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(k[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t value) {
  const int32_t v = value >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Rows [row0, row0 + rows) of `in` resampled horizontally to `out_width`.
RgbImage horizontal_pass(const RgbImage& in, int row0, int rows, int out_width, const Coefficients& c) {
  RgbImage out{out_width, rows, std::vector<uint8_t>(static_cast<size_t>(out_width) * rows * 3)};
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* line = in.rgb.data() + static_cast<size_t>(row0 + yy) * in.width * 3;
    uint8_t* dst = out.rgb.data() + static_cast<size_t>(yy) * out_width * 3;
    for (int xx = 0; xx < out_width; ++xx) {
      const int32_t* k = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
      const int xmin = c.first[xx];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < c.count[xx]; ++x) {
        const uint8_t* p = line + static_cast<size_t>(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[xx * 3 + 0] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

// `in` resampled vertically to `out_height`; the coefficients' first rows are relative to row `offset` of `in`.
RgbImage vertical_pass(const RgbImage& in, int out_height, const Coefficients& c, int offset) {
  RgbImage out{in.width, out_height, std::vector<uint8_t>(static_cast<size_t>(in.width) * out_height * 3)};
  const size_t stride = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out_height; ++yy) {
    const int32_t* k = c.weights.data() + static_cast<size_t>(yy) * c.ksize;
    const int ymin = c.first[yy] - offset;
    uint8_t* dst = out.rgb.data() + static_cast<size_t>(yy) * stride;
    for (size_t i = 0; i < stride; ++i) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < c.count[yy]; ++y) s += in.rgb[static_cast<size_t>(ymin + y) * stride + i] * k[y];
      dst[i] = clip8(s);
    }
  }
  return out;
}

// PIL's ImagingResampleInner: the horizontal pass over the rows the vertical pass reads, then the vertical pass.
RgbImage convolve(const RgbImage& in, int width, int height, const Filter& filter) {
  const bool horizontal = width != in.width, vertical = height != in.height;
  if (!horizontal && !vertical) return in;
  const Coefficients rows = precompute(in.height, height, filter);
  if (!horizontal) return vertical_pass(in, height, rows, 0);
  const int first_row = rows.first[0];
  const int last_row = rows.first[height - 1] + rows.count[height - 1];
  const Coefficients columns = precompute(in.width, width, filter);
  RgbImage narrowed = horizontal_pass(in, vertical ? first_row : 0, vertical ? last_row - first_row : in.height,
                                      width, columns);
  if (!vertical) return narrowed;
  return vertical_pass(narrowed, height, rows, first_row);
}

// PIL's ImagingScaleAffine for Image.resize(..., NEAREST).
RgbImage nearest(const RgbImage& in, int width, int height) {
  const double ax = static_cast<double>(static_cast<float>(in.width)) / width;
  const double ay = static_cast<double>(static_cast<float>(in.height)) / height;
  const auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
  std::vector<int> source_x(width, -1);
  double xo = 0.0 + ax * 0.5;
  for (int x = 0; x < width; ++x) {
    const int xin = coord(xo);
    if (xin >= 0 && xin < in.width) source_x[x] = xin;
    xo += ax;
  }
  RgbImage out{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3, 0)};
  double yo = 0.0 + ay * 0.5;
  for (int y = 0; y < height; ++y) {
    const int yin = coord(yo);
    if (yin >= 0 && yin < in.height) {
      const uint8_t* line = in.rgb.data() + static_cast<size_t>(yin) * in.width * 3;
      uint8_t* dst = out.rgb.data() + static_cast<size_t>(y) * width * 3;
      for (int x = 0; x < width; ++x)
        if (source_x[x] >= 0)
          for (int ch = 0; ch < 3; ++ch) dst[x * 3 + ch] = line[source_x[x] * 3 + ch];
    }
    yo += ay;
  }
  return out;
}

}  // namespace

RgbImage pil_resize(const RgbImage& image, int width, int height, Resample resample) {
  PALI_CHECK(width > 0 && height > 0 && image.width > 0 && image.height > 0, "resize of an empty image");
  if (image.width == width && image.height == height) return image;
  if (resample == Resample::nearest) return nearest(image, width, height);
  const Filter filter = filter_of(resample);
  // Image.resize: a very tall image shrinking in height is resized in height first.
  if (image.height > image.width * 100 && height < image.height)
    return convolve(convolve(image, image.width, height, filter), width, height, filter);
  return convolve(image, width, height, filter);
}

Resample resample_from_name(const std::string& name) {
  if (name == "nearest") return Resample::nearest;
  if (name == "bilinear") return Resample::bilinear;
  if (name == "bicubic") return Resample::bicubic;
  if (name == "lanczos") return Resample::lanczos;
  throw InvalidArgument(str_cat("unknown resample '", name, "'; choose from bicubic, bilinear, lanczos, nearest"));
}

}  // namespace pali::api
