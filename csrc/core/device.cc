#include "core/device.h"

#include "core/error.h"

namespace pali {

Device device_from_name(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") {
    PALI_CHECK_ARG(built_with_cuda(),
                   "device 'cuda' requested but this module was built without CUDA");
    return Device::cuda;
  }
  throw InvalidArgument(str_cat("unknown device '", name, "' (expected 'cpu' or 'cuda')"));
}

}  // namespace pali
