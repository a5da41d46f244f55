// Device memory for tensors in the CUDA build.
#include <cuda_runtime.h>

#include <memory>

#include "core/cuda_check.h"
#include "core/error.h"

namespace pali {

std::shared_ptr<void> allocate_cuda(size_t nbytes) {
  void* p = nullptr;
  PALI_CUDA_CHECK(cudaMalloc(&p, nbytes ? nbytes : 1));
  return std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
}

void copy_bytes_cuda(void* dst, const void* src, size_t nbytes) {
  PALI_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
}

int cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error: no driver or no device means zero devices
    return 0;
  }
  return count;
}

}  // namespace pali
