// Tensor: a typed, shaped view of memory on one device.
//
// Memory is shared (copying a Tensor copies a reference): a tensor either owns
// an allocation or views memory kept alive by an owner, such as a model file
// mapped into memory, so weights are used in place without a copy.
// Tensors are dense and row-major; ops take their sizes from the shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace pali {

using Shape = std::vector<int64_t>;

// Number of elements in a shape; throws InvalidArgument on negative dims or overflow.
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

template <typename T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::i8; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<int16_t> { static constexpr DType value = DType::i16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory, 64-byte aligned.
  static Tensor empty(DType dtype, const Shape& shape, Device device = Device::cpu);
  static Tensor zeros(DType dtype, const Shape& shape, Device device = Device::cpu);
  // A view of memory owned elsewhere; `owner` is kept alive as long as the view is.
  static Tensor view(const void* data, DType dtype, const Shape& shape,
                     std::shared_ptr<const void> owner, Device device = Device::cpu);

  bool defined() const { return data_ != nullptr || numel_ == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Size of dimension `axis`; negative axes count from the end.
  int64_t dim(int axis) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  const void* raw() const { return data_; }
  void* raw_mutable() { return const_cast<void*>(data_); }

  template <typename T>
  const T* data() const {
    check_dtype(dtype_of<T>::value);
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* data() {
    check_dtype(dtype_of<T>::value);
    return static_cast<T*>(const_cast<void*>(data_));
  }

  // Same memory, another shape with the same number of elements.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) of the first dimension, without a copy.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // A deep copy on the same device.
  Tensor clone() const;

  // "float32[2, 3]": for error messages.
  std::string describe() const;

 private:
  void check_dtype(DType expected) const;

  std::shared_ptr<const void> owner_;
  const void* data_ = nullptr;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  Shape shape_;
  int64_t numel_ = 0;
};

// Raw allocation on a device; CUDA allocation needs the CUDA build.
std::shared_ptr<void> allocate(size_t nbytes, Device device);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace pali
