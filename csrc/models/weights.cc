#include "models/weights.h"

#include <cstring>

#include "core/error.h"

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

int64_t first_non_finite(const Tensor& t) {
  switch (t.dtype()) {
    case DType::f32: return first_non_finite<uint32_t>(t.raw(), t.numel(), 0x7f800000u);
    case DType::f16: return first_non_finite<uint16_t>(t.raw(), t.numel(), 0x7c00u);
    case DType::bf16: return first_non_finite<uint16_t>(t.raw(), t.numel(), 0x7f80u);
    default: return -1;
  }
}

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
  const int64_t bad = first_non_finite(t);
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
  if (t.dtype() == DType::f32) {
    std::memcpy(dst, t.raw(), t.numel() * sizeof(float));
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(t.raw());
    const bool half = t.dtype() == DType::f16;
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = half ? half_to_float(src[i]) : bfloat16_to_float(src[i]);
  }
  file_->release(name);
  return out;
}

LinearWeight WeightStore::linear(const std::string& weight, int64_t out, int64_t in,
                                 const std::string& bias, WeightFormat format) {
  if (bias.empty()) return linear_concat({weight}, {out}, in, {}, format);
  return linear_concat({weight}, {out}, in, {bias}, format);
}

LinearWeight WeightStore::linear_concat(const std::vector<std::string>& weights,
                                        const std::vector<int64_t>& outs, int64_t in,
                                        const std::vector<std::string>& biases, WeightFormat format) {
  std::vector<Tensor> ws, bs;
  for (size_t i = 0; i < weights.size(); ++i) ws.push_back(raw(weights[i], {outs[i], in}));
  for (size_t i = 0; i < biases.size(); ++i) bs.push_back(raw(biases[i], {outs[i]}));
  if (listing()) return {};
  std::vector<const Tensor*> wp, bp;
  for (const auto& t : ws) wp.push_back(&t);
  for (const auto& t : bs) bp.push_back(&t);
  LinearWeight packed = prepare_linear_concat(wp, bp, format, &arena_, format == WeightFormat::i8);
  for (const auto& name : weights) file_->release(name);
  for (const auto& name : biases) file_->release(name);
  return packed;
}

LinearWeight WeightStore::prepare(const Tensor& weight, const Tensor* bias, WeightFormat format) {
  if (listing()) return {};
  return prepare_linear(weight, bias, format, &arena_, format == WeightFormat::i8);
}

void WeightStore::release(const std::string& name) const {
  if (!listing()) file_->release(name);
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
