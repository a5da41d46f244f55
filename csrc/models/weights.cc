#include "models/weights.h"

#include <cstring>

#include "core/error.h"

namespace pali {

Tensor WeightStore::raw(const std::string& name, const Shape& shape) {
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
  return file_->tensor(name);
}

Tensor WeightStore::f32(const std::string& name, const Shape& shape) {
  Tensor t = raw(name, shape);
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
  std::vector<const Tensor*> wp, bp;
  for (const auto& t : ws) wp.push_back(&t);
  for (const auto& t : bs) bp.push_back(&t);
  LinearWeight packed = prepare_linear_concat(wp, bp, format, &arena_, format == WeightFormat::i8);
  for (const auto& name : weights) file_->release(name);
  for (const auto& name : biases) file_->release(name);
  return packed;
}

LinearWeight WeightStore::prepare(const Tensor& weight, const Tensor* bias, WeightFormat format) {
  return prepare_linear(weight, bias, format, &arena_, format == WeightFormat::i8);
}

void WeightStore::check_all_used() const {
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
