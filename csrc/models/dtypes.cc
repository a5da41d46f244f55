// The engine's dtypes (models/dtypes.h).
#include "models/dtypes.h"

#include "core/error.h"

namespace pali {

const std::vector<EngineDtype>& engine_dtypes() {
  static const std::vector<EngineDtype> table = {
      {"float32", WeightFormat::f32, "weights in float32"},
      {"float16", WeightFormat::f16, "weights rounded to float16, float32 arithmetic"},
      {"bfloat16", WeightFormat::bf16,
       "weights in bfloat16 (a bfloat16 checkpoint's as they are); float32 arithmetic, but for the prefill on CPUs "
       "with AVX-512 BF16, which multiplies activations rounded to bfloat16 with float32 sums"},
      {"int8", WeightFormat::i8,
       "weights per output channel and activations per row in int8, integer products"},
      {"int4", WeightFormat::i4_g32, "weights in int4, one float16 scale per output and group of 32 inputs"},
      {"int4_g64", WeightFormat::i4_g64, "int4 weights in groups of 64 inputs"},
      {"int4_g128", WeightFormat::i4_g128, "int4 weights in groups of 128 inputs"},
  };
  return table;
}

std::string engine_dtype_names(const char* separator) {
  std::string out;
  for (const auto& d : engine_dtypes()) out += (out.empty() ? "" : separator) + std::string(d.name);
  return out;
}

const EngineDtype& engine_dtype(const std::string& name) {
  for (const auto& d : engine_dtypes())
    if (name == d.name) return d;
  throw InvalidArgument(str_cat("dtype must be one of ", engine_dtype_names(), ", got '", name, "'"));
}

const EngineDtype& default_engine_dtype(const std::string* weights_dtype) {
  for (const auto& d : engine_dtypes())
    if (weights_dtype && *weights_dtype == d.name && (d.format == WeightFormat::i8 || is_int4(d.format))) return d;
  return engine_dtypes().front();
}

}  // namespace pali
