// pali_engine._core.ops: each op callable on numpy arrays, for tests and kernel sandboxes.
#include "bindings/bindings.h"

namespace pali::bindings {

void bind_ops(py::module_& m) { m.def_submodule("ops", "Single ops on numpy arrays, for testing."); }

}  // namespace pali::bindings
