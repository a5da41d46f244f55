// Registration functions of the Python module, one per area of the engine.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <vector>

#include "core/tensor.h"
#include "generate/generation_options.h"

namespace pali::bindings {

namespace py = pybind11;

// Every class is bound with py::module_local(): _core and _core_cuda hold the same
// C++ types and both may be imported in one process.

void bind_core(py::module_& m);
void bind_onnx(py::module_& m);
// Ops exposed one by one (submodule `ops`), for tests against NumPy/PyTorch references.
void bind_ops(py::module_& m);
// The architecture registry and class `Model` (every architecture).
void bind_models(py::module_& m);
#ifdef PALI_WITH_CUDA
// The CUDA ops on numpy arrays (submodule `cuda_ops`, _core_cuda only).
void bind_cuda_ops(py::module_& m);
#endif

// generation_options, parse_generation_options: the options' table and its check.
void bind_generation(py::module_& m);
// Generation options from generate()'s keyword arguments (InvalidArgument names a
// bad one); a seed of None becomes a fresh random one.
GenerationOptions generation_options_from_dict(const py::dict& options, int64_t default_max_new_tokens = 32);
// ([[ (tokens, score, finished), ... ] per request], timings dict).
py::tuple generation_results(const std::vector<std::vector<Hypothesis>>& results, const GenerationTimings& timings);

// A numpy array sharing the tensor's memory (read-only; the tensor stays alive
// as long as the array). bfloat16 has no numpy type: it comes back as uint16 bits.
py::array tensor_to_numpy(const Tensor& tensor);
// A tensor viewing a C-contiguous numpy array (kept alive by the tensor).
Tensor numpy_to_tensor(const py::array& array);

}  // namespace pali::bindings
