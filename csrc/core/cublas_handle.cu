// One cuBLAS handle per thread and device, created on first use.
#include <cublas_v2.h>

#include "core/cuda_check.h"

namespace pali {

cublasHandle_t cublas_handle() {
  thread_local cublasHandle_t handle = nullptr;
  if (!handle) {
    const cublasStatus_t status = cublasCreate(&handle);
    if (status != CUBLAS_STATUS_SUCCESS)
      throw RuntimeFailure(str_cat("cublasCreate failed with status ", static_cast<int>(status)));
  }
  return handle;
}

int cublas_version() {
  int major = 0, minor = 0, patch = 0;
  cublasGetProperty(MAJOR_VERSION, &major);
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  return major * 10000 + minor * 100 + patch;
}

}  // namespace pali
