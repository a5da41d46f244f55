// Where a tensor's memory lives.
#pragma once

#include <string>

namespace pali {

enum class Device { cpu, cuda };

inline const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

// True when this module was compiled with the CUDA backend.
constexpr bool built_with_cuda() {
#ifdef PALI_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Parses "cpu" or "cuda"; throws InvalidArgument otherwise, and for "cuda" in a CPU build.
Device device_from_name(const std::string& name);

#ifdef PALI_WITH_CUDA
// Number of usable CUDA devices; 0 without a driver or device (never throws).
int cuda_device_count();
// Version of the loaded cuBLAS, as major * 10000 + minor * 100 + patch.
int cublas_version();
#endif

}  // namespace pali
