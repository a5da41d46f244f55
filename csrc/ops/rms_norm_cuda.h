// CUDA T5 RMSNorm and the fused residual add + RMSNorm (see ops/rms_norm.h).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace pali {

// x, y: device [m, d] in `dtype` (float32, float16, bfloat16; y may equal x);
// weight: device [d] in `dtype` or null. Requires d <= 12288.
void rms_norm_cuda(const void* x, int64_t m, int64_t d, const void* weight, float eps, void* y,
                   DType dtype, cudaStream_t stream = nullptr);

// residual[m, d] += delta[m, d]; y = rms_norm(residual) * weight, in one pass.
// residual is float32 or `dtype` (`residual_dtype`: a float32 residual stream
// keeps fp16 T5 from overflowing); delta, weight and y are in `dtype`. The
// sum is rounded to residual_dtype, stored, and y is computed from the stored
// value. delta may be null (no add, residual untouched). y must not alias
// residual or delta.
void add_rms_norm_cuda(void* residual, DType residual_dtype, const void* delta, int64_t m, int64_t d,
                       const void* weight, float eps, void* y, DType dtype,
                       cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
