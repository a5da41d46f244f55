// pali_engine._core.PaliModel: the native model and its generation loop.
#include "bindings/bindings.h"

namespace pali::bindings {

void bind_engine(py::module_& m) {}

}  // namespace pali::bindings
