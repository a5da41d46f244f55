// Build facts and numpy <-> Tensor conversion.
#include <cstring>

#include "bindings/bindings.h"
#include "bindings/gil.h"
#include "core/system_memory.h"
#include "core/dtype.h"

namespace pali::bindings {
namespace {

py::dtype numpy_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return py::dtype("float32");
    case DType::f64: return py::dtype("float64");
    case DType::f16: return py::dtype("float16");
    case DType::bf16: return py::dtype("uint16");
    case DType::i8: return py::dtype("int8");
    case DType::u8: return py::dtype("uint8");
    case DType::i16: return py::dtype("int16");
    case DType::i32: return py::dtype("int32");
    case DType::i64: return py::dtype("int64");
    case DType::boolean: return py::dtype("bool");
  }
  throw RuntimeFailure("unknown dtype");
}

DType dtype_from_numpy(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 8) return DType::f64;
  if (kind == 'f' && size == 2) return DType::f16;
  if (kind == 'i' && size == 1) return DType::i8;
  if (kind == 'u' && size == 1) return DType::u8;
  if (kind == 'i' && size == 2) return DType::i16;
  if (kind == 'i' && size == 4) return DType::i32;
  if (kind == 'i' && size == 8) return DType::i64;
  if (kind == 'b') return DType::boolean;
  throw InvalidArgument(str_cat("unsupported array dtype '", std::string(py::str(dt)), "'"));
}

}  // namespace

py::array tensor_to_numpy(const Tensor& tensor) {
  PALI_CHECK(tensor.device() == Device::cpu, "only CPU tensors convert to numpy");
  auto* keep = new Tensor(tensor);
  py::capsule owner(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  std::vector<py::ssize_t> shape(tensor.shape().begin(), tensor.shape().end());
  py::array out(numpy_dtype(tensor.dtype()), shape, {}, tensor.raw(), owner);
  py::detail::array_proxy(out.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return out;
}

Tensor numpy_to_tensor(const py::array& array) {
  py::array contiguous = py::array::ensure(array, py::array::c_style);
  if (!contiguous) throw InvalidArgument("expected an array");
  Shape shape(contiguous.shape(), contiguous.shape() + contiguous.ndim());
  auto* keep = new py::object(contiguous);
  std::shared_ptr<const void> owner(keep, [](const void* p) {
    // At exit the array is left to the interpreter: taking the GIL then would end this thread.
    if (python_is_finalizing()) return;
    py::gil_scoped_acquire gil;
    delete static_cast<const py::object*>(p);
  });
  return Tensor::view(contiguous.data(), dtype_from_numpy(contiguous.dtype()), shape, owner);
}

void bind_core(py::module_& m) {
  m.attr("built_with_cuda") = built_with_cuda();
  m.def("available_memory_bytes", &available_memory_bytes,
        "Bytes the engine counts as available for a request's buffers (MemAvailable, within the cgroup limit).");
  m.def(
      "cuda_device_count",
      []() {
#ifdef PALI_WITH_CUDA
        return cuda_device_count();
#else
        return 0;
#endif
      },
      "Number of CUDA devices this module can use (0 in a CPU build or without a driver).");
#ifdef PALI_WITH_CUDA
  m.def("cublas_version", &cublas_version, "Version of the cuBLAS library this module loaded.");
#endif
#ifdef PALI_ENGINE_VERSION
  m.attr("__version__") = PALI_ENGINE_VERSION;
#endif
}

}  // namespace pali::bindings
