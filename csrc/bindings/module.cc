// The Python module pali_engine._core (CPU) or pali_engine._core_cuda (CPU + CUDA).
//
// C++ exceptions become Python exceptions here: InvalidArgument -> ValueError,
// ModelFileError -> pali_engine.errors.ModelFileError (a ValueError), EngineBusy
// -> pali_engine.errors.EngineBusy (a RuntimeError),
// OutOfMemory and std::bad_alloc -> MemoryError, anything else -> RuntimeError.
// Nothing in the engine aborts the process.
#include <exception>

#include "bindings/bindings.h"
#include "core/error.h"

namespace py = pybind11;

PYBIND11_MODULE(PALI_MODULE_NAME, m) {
  m.doc() = "pali-engine native core";
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const pali::ModelFileError& e) {
      py::object cls = py::module_::import("pali_engine.errors").attr("ModelFileError");
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const pali::EngineBusy& e) {
      py::object cls = py::module_::import("pali_engine.errors").attr("EngineBusy");
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const pali::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const pali::OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory");
    }
  });
  pali::bindings::bind_core(m);
  pali::bindings::bind_onnx(m);
  pali::bindings::bind_ops(m);
  pali::bindings::bind_generation(m);
  pali::bindings::bind_models(m);
#ifdef PALI_WITH_CUDA
  pali::bindings::bind_cuda_ops(m);
#endif
}
