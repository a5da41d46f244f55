// CUDA LayerNorm over the last dimension (see ops/layer_norm.h for the maths).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace pali {

// x, y: device [m, d] row-major in `dtype` (float32, float16 or bfloat16; y may
// equal x); gamma, beta: device [d] in `dtype`, either may be null (1 / 0).
// Statistics in float32, two passes over a copy of the row in shared memory.
// Requires d <= 12288. Asynchronous on `stream`.
void layer_norm_cuda(const void* x, int64_t m, int64_t d, const void* gamma, const void* beta,
                     float eps, void* y, DType dtype, cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
