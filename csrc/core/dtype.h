// Element types of tensors, with their sizes and names.
//
// The names are the ones numpy and the Python API use ("float32", "bfloat16"...);
// the ONNX reader maps ONNX TensorProto data types onto these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pali {

enum class DType : uint8_t { f32, f64, f16, bf16, i8, u8, i16, i32, i64, boolean };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
// Parses a name from dtype_name(); throws InvalidArgument listing the known names.
DType dtype_from_name(const std::string& name);

// 16-bit float formats stored as raw bits; conversions are exact where the
// value is representable and round-to-nearest-even otherwise.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

float half_to_float(uint16_t bits);
uint16_t float_to_half(float value);
inline float bfloat16_to_float(uint16_t bits) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(bits) << 16};
  return v.f;
}
uint16_t float_to_bfloat16(float value);

}  // namespace pali
