#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/dispatch.h"

namespace pali {

#ifdef PALI_WITH_CUDA
std::shared_ptr<void> allocate_cuda(size_t nbytes);
void copy_bytes_cuda(void* dst, const void* src, size_t nbytes);
#endif

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    PALI_CHECK_ARG(d >= 0, "negative dimension in shape ", shape_str(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw InvalidArgument(str_cat("shape ", shape_str(shape), " has too many elements"));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::shared_ptr<void> allocate(size_t nbytes, Device device) {
  std::shared_ptr<void> out;
  PALI_DISPATCH_DEVICE(
      device,
      {
        const size_t rounded = (nbytes + 63) / 64 * 64;
        void* p = std::aligned_alloc(64, rounded ? rounded : 64);
        if (!p) throw RuntimeFailure(str_cat("out of memory allocating ", nbytes, " bytes"));
        out = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
      },
      out = allocate_cuda(nbytes));
  return out;
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device == Device::cpu && src_device == Device::cpu) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  PALI_DISPATCH_DEVICE(Device::cuda, (void)0, copy_bytes_cuda(dst, src, nbytes));
}

Tensor Tensor::empty(DType dtype, const Shape& shape, Device device) {
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  auto memory = allocate(t.nbytes(), device);
  t.data_ = memory.get();
  t.owner_ = std::move(memory);
  return t;
}

Tensor Tensor::zeros(DType dtype, const Shape& shape, Device device) {
  Tensor t = empty(dtype, shape, device);
  if (device == Device::cpu) {
    std::memset(t.raw_mutable(), 0, t.nbytes());
  } else {
    std::vector<uint8_t> host(t.nbytes(), 0);
    copy_bytes(t.raw_mutable(), device, host.data(), Device::cpu, host.size());
  }
  return t;
}

Tensor Tensor::view(const void* data, DType dtype, const Shape& shape,
                    std::shared_ptr<const void> owner, Device device) {
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

int64_t Tensor::dim(int axis) const {
  const int r = rank();
  const int a = axis < 0 ? axis + r : axis;
  PALI_CHECK(a >= 0 && a < r, "axis ", axis, " out of range for ", describe());
  return shape_[a];
}

Tensor Tensor::reshape(const Shape& shape) const {
  PALI_CHECK(shape_numel(shape) == numel_, "cannot reshape ", describe(), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  PALI_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
             "bad row slice [", begin, ", ", end, ") of ", describe());
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = shape_numel(t.shape_);
  const int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  t.data_ = static_cast<const uint8_t*>(data_) + begin * row * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(dtype_, shape_, device_);
  copy_bytes(t.raw_mutable(), device_, data_, device_, nbytes());
  return t;
}

std::string Tensor::describe() const { return str_cat(dtype_name(dtype_), shape_str(shape_)); }

void Tensor::check_dtype(DType expected) const {
  PALI_CHECK(dtype_ == expected, "expected a ", dtype_name(expected), " tensor, got ", describe());
}

}  // namespace pali
