#include "models/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "models/dtypes.h"

namespace pali {
namespace {

// Index of the first NaN or infinity among the values, or -1. Tested on the
// exponent bits: one pass over the file's bytes, cheap next to packing them.
template <typename Bits>
int64_t first_non_finite(const void* data, int64_t count, Bits exponent_mask) {
  const Bits* bits = static_cast<const Bits*>(data);
  for (int64_t i = 0; i < count; ++i)
    if ((bits[i] & exponent_mask) == exponent_mask) return i;
  return -1;
}

int64_t first_non_finite(const void* data, DType dtype, int64_t count) {
  switch (dtype) {
    case DType::f32: return first_non_finite<uint32_t>(data, count, 0x7f800000u);
    case DType::f16: return first_non_finite<uint16_t>(data, count, 0x7c00u);
    case DType::bf16: return first_non_finite<uint16_t>(data, count, 0x7f80u);
    default: return -1;
  }
}

// Tensors above this size are scanned, copied and packed in chunks whose file
// pages are dropped as they go; smaller ones are released whole once used.
constexpr size_t kLargeTensorBytes = size_t{64} << 20;
constexpr size_t kChunkBytes = size_t{16} << 20;

}  // namespace

Tensor WeightStore::raw(const std::string& name, const Shape& shape) {
  if (listing()) {
    if (used_.insert(name).second) listed_.push_back({name, shape});
    return Tensor::view(nullptr, DType::f32, shape, nullptr);
  }
  if (!file_->has_tensor(name))
    throw ModelFileError(str_cat(path(), ": missing tensor '", name, "' (expected shape ",
                                 shape_str(shape), ")"));
  const auto& info = file_->info(name);
  if (info.shape != shape)
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' has shape ", shape_str(info.shape),
                                 " but the config implies ", shape_str(shape)));
  if (info.dtype != DType::f32 && info.dtype != DType::f16 && info.dtype != DType::bf16)
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' has dtype ", dtype_name(info.dtype),
                                 "; expected float32, float16 or bfloat16"));
  used_.insert(name);
  Tensor t = file_->tensor(name);
  // A NaN or infinite weight makes every answer garbage: refuse the file.
  int64_t bad = -1;
  const size_t element = dtype_size(t.dtype());
  const int64_t chunk = static_cast<int64_t>(kChunkBytes / element);
  for (int64_t begin = 0; begin < t.numel() && bad < 0; begin += chunk) {
    const auto* p = static_cast<const unsigned char*>(t.raw()) + static_cast<size_t>(begin) * element;
    const int64_t n = std::min(chunk, t.numel() - begin);
    const int64_t at = first_non_finite(p, t.dtype(), n);
    if (at >= 0) bad = begin + at;
    if (t.nbytes() > kLargeTensorBytes) file_->release_bytes(p, static_cast<size_t>(n) * element);
  }
  if (bad >= 0) {
    file_->check_unchanged();
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' holds a non-finite value (NaN or infinity) at ",
                                 "flat index ", bad));
  }
  return t;
}

Tensor WeightStore::f32(const std::string& name, const Shape& shape) {
  Tensor t = raw(name, shape);
  if (listing()) return t;
  // Always a copy the model owns, so that the model does not keep the file mapped.
  Tensor out = Tensor::empty(DType::f32, shape);
  float* dst = out.data<float>();
  const int64_t chunk = static_cast<int64_t>(kChunkBytes / dtype_size(t.dtype()));
  for (int64_t begin = 0; begin < t.numel(); begin += chunk) {
    const int64_t n = std::min(chunk, t.numel() - begin);
    const size_t bytes = static_cast<size_t>(n) * dtype_size(t.dtype());
    const auto* src = static_cast<const unsigned char*>(t.raw()) + static_cast<size_t>(begin) * dtype_size(t.dtype());
    if (t.dtype() == DType::f32) {
      std::memcpy(dst + begin, src, bytes);
    } else {
      const auto* bits = reinterpret_cast<const uint16_t*>(src);
      const bool half = t.dtype() == DType::f16;
      for (int64_t i = 0; i < n; ++i) dst[begin + i] = half ? half_to_float(bits[i]) : bfloat16_to_float(bits[i]);
    }
    file_->release_bytes(src, bytes);
  }
  return out;
}

Tensor WeightStore::copy(const Tensor& stored) {
  if (listing()) return stored;
  Tensor out = Tensor::empty(stored.dtype(), stored.shape());
  const auto* src = static_cast<const unsigned char*>(stored.raw());
  auto* dst = static_cast<unsigned char*>(out.raw_mutable());
  for (size_t begin = 0; begin < stored.nbytes(); begin += kChunkBytes) {
    const size_t n = std::min(kChunkBytes, stored.nbytes() - begin);
    std::memcpy(dst + begin, src + begin, n);
    release_bytes(src + begin, n);
  }
  return out;
}

LinearWeight WeightStore::linear(const std::string& weight, int64_t out, int64_t in,
                                 const std::string& bias, WeightFormat format) {
  if (bias.empty()) return linear_concat({weight}, {out}, in, {}, format);
  return linear_concat({weight}, {out}, in, {bias}, format);
}

std::optional<QuantizedRows> WeightStore::quantized(const std::string& name, int64_t out, int64_t in,
                                                    WeightFormat* format) {
  if (listing() || !file_->has_tensor(name)) return std::nullopt;
  const auto& info = file_->info(name);
  if (!info.int4 && info.dtype != DType::i8) return std::nullopt;  // a float tensor, or raw() says what is wrong
  // The quantized dtype the metadata declares (float32 when it declares none).
  const std::string* declared = file_->find_metadata("pali.weights_dtype");
  const WeightFormat stored = default_engine_dtype(declared).format;
  if (info.int4 ? !is_int4(stored) : stored != WeightFormat::i8)
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' is ", file_->dtype_label(name),
                                 " but 'pali.weights_dtype' is '", declared ? *declared : std::string(), "'"));
  *format = stored;
  if (info.shape != Shape{out, in})
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' has shape ", shape_str(info.shape),
                                 " but the config implies ", shape_str({out, in})));
  const std::string scale = name + "_scale";
  const int64_t groups = info.int4 ? (in + int4_group_size(*format) - 1) / int4_group_size(*format) : 0;
  const Shape scale_shape = info.int4 ? Shape{out, groups} : Shape{out};
  const DType scale_dtype = info.int4 ? DType::f16 : DType::f32;
  if (!file_->has_tensor(scale))
    throw ModelFileError(str_cat(path(), ": tensor '", name, "' is ", file_->dtype_label(name), " but its scales '",
                                 scale, "' are missing"));
  const auto& scale_info = file_->info(scale);
  if (scale_info.int4 || scale_info.dtype != scale_dtype || scale_info.shape != scale_shape)
    throw ModelFileError(str_cat(path(), ": tensor '", scale, "' is ", file_->dtype_label(scale),
                                 shape_str(scale_info.shape), "; expected ", dtype_name(scale_dtype),
                                 shape_str(scale_shape)));
  used_.insert(name);
  used_.insert(scale);
  QuantizedRows rows{file_->tensor(name), file_->tensor(scale)};
  // A zero, negative (int8), NaN or infinite scale, or an int8 code of -128,
  // is nothing the engine's quantization writes: refuse the file.
  const int64_t count = rows.scales.numel();
  for (int64_t i = 0; i < count; ++i) {
    const float v = info.int4 ? half_to_float(static_cast<const uint16_t*>(rows.scales.raw())[i])
                              : rows.scales.data<float>()[i];
    if (!std::isfinite(v) || v == 0.0f || (!info.int4 && v < 0.0f))
      throw ModelFileError(str_cat(path(), ": tensor '", scale, "' holds an invalid scale (", v, ") at flat index ", i));
  }
  if (!info.int4) {
    const int8_t* codes = rows.codes.data<int8_t>();
    for (int64_t i = 0; i < rows.codes.numel(); ++i)
      if (codes[i] == -128)
        throw ModelFileError(str_cat(path(), ": tensor '", name, "' holds the code -128 at flat index ", i,
                                     "; int8 weights are symmetric, in [-127, 127]"));
  }
  return rows;
}

namespace {

// The float32 values a quantized weight stands for: code * scale, as
// DequantizeLinear computes them.
Tensor dequantize(const QuantizedRows& q, WeightFormat format, int64_t out, int64_t in) {
  Tensor w = Tensor::empty(DType::f32, {out, in});
  float* dst = w.data<float>();
  if (format == WeightFormat::i8) {
    const int8_t* codes = q.codes.data<int8_t>();
    const float* scales = q.scales.data<float>();
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) dst[r * in + c] = static_cast<float>(codes[r * in + c]) * scales[r];
  } else {
    const int64_t group = int4_group_size(format), groups = (in + group - 1) / group;
    const auto* bytes = static_cast<const uint8_t*>(q.codes.raw());
    const auto* scales = static_cast<const uint16_t*>(q.scales.raw());
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const int nibble = (bytes[(r * in + c) / 2] >> (4 * (c % 2))) & 0xF;
        dst[r * in + c] = static_cast<float>((nibble ^ 8) - 8) * half_to_float(scales[r * groups + c / group]);
      }
  }
  return w;
}

const char* dtype_of_format(WeightFormat format) {
  for (const auto& d : engine_dtypes())
    if (d.format == format) return d.name;
  return weight_format_name(format);
}

}  // namespace

LinearWeight WeightStore::linear_concat(const std::vector<std::string>& weights,
                                        const std::vector<int64_t>& outs, int64_t in,
                                        const std::vector<std::string>& biases, WeightFormat format) {
  std::vector<std::optional<QuantizedRows>> quantized_weights;
  WeightFormat stored = format;
  for (size_t i = 0; i < weights.size(); ++i) quantized_weights.push_back(quantized(weights[i], outs[i], in, &stored));
  const size_t quantized_count = static_cast<size_t>(
      std::count_if(quantized_weights.begin(), quantized_weights.end(), [](const auto& q) { return q.has_value(); }));
  if (quantized_count != 0 && quantized_count != weights.size())
    throw ModelFileError(str_cat(path(), ": tensors '", weights.front(), "' ... '", weights.back(),
                                 "' feed one layer but only some are quantized"));
  std::vector<Tensor> ws, bs;
  if (quantized_count == 0)
    for (size_t i = 0; i < weights.size(); ++i) ws.push_back(raw(weights[i], {outs[i], in}));
  for (size_t i = 0; i < biases.size(); ++i) bs.push_back(raw(biases[i], {outs[i]}));
  if (listing()) return {};
  std::vector<const Tensor*> bp;
  for (const auto& t : bs) bp.push_back(&t);
  const auto release = [this](const void* p, size_t n) { release_bytes(p, n); };
  LinearWeight packed;
  if (quantized_count != 0 && format == stored) {
    std::vector<QuantizedRows> rows;
    for (auto& q : quantized_weights) rows.push_back(std::move(*q));
    packed = prepare_quantized_concat(rows, bp, format, in, &arena_, format == WeightFormat::i8, release);
  } else {
    if (quantized_count != 0) {
      if (format != WeightFormat::f32 && format != WeightFormat::f16 && format != WeightFormat::bf16)
        throw InvalidArgument(str_cat(path(), " holds ", dtype_of_format(stored), " weights: load it with dtype '",
                                      dtype_of_format(stored), "' or a float dtype, not '", dtype_of_format(format),
                                      "'"));
      for (size_t i = 0; i < weights.size(); ++i) ws.push_back(dequantize(*quantized_weights[i], stored, outs[i], in));
    }
    std::vector<const Tensor*> wp;
    for (const auto& t : ws) wp.push_back(&t);
    packed = prepare_linear_concat(wp, bp, format, &arena_, format == WeightFormat::i8, release);
  }
  for (const auto& name : weights) {
    file_->release(name);
    if (quantized_count != 0) file_->release(name + "_scale");
  }
  for (const auto& name : biases) file_->release(name);
  return packed;
}

LinearWeight WeightStore::prepare(const Tensor& weight, const Tensor* bias, WeightFormat format) {
  if (listing()) return {};
  return prepare_linear(weight, bias, format, &arena_, format == WeightFormat::i8,
                        [this](const void* p, size_t n) { release_bytes(p, n); });
}

void WeightStore::release(const std::string& name) const {
  if (!listing()) file_->release(name);
}

void WeightStore::release_bytes(const void* p, size_t n) const {
  if (!listing()) file_->release_bytes(p, n);
}

void WeightStore::check_all_used() const {
  if (listing()) return;
  std::string unused;
  int count = 0;
  for (const auto& info : file_->initializers()) {
    if (used_.count(info.name)) continue;
    if (count < 5) unused += (count ? ", '" : "'") + info.name + "'";
    ++count;
  }
  if (count)
    throw ModelFileError(str_cat(path(), ": ", count, " tensor(s) not used by the config: ", unused,
                                 count > 5 ? ", ..." : ""));
}

}  // namespace pali
