// CUDA linear layer through cuBLAS: y[m, N] = x[m, K] · Wᵀ + b with the
// PyTorch weight layout [N, K], half/bfloat16 (or float32) storage and float32
// accumulation (CUBLAS_COMPUTE_32F: no TF32 for float32 inputs).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace pali {

// The calling thread's cuBLAS handle (core/cublas_handle.cu).
cublasHandle_t cublas_handle();

// x: device [m, K] with row stride x_stride (>= K) elements; w: device [N, K]
// dense; bias: device [N] or null; y: device [m, N] with row stride y_stride
// (>= N). All in `dtype` (float32, float16, bfloat16). With accumulate,
// y += x · Wᵀ + b (a fused residual add). y must not overlap x or w.
// The bias is first written (or added) into y, then one cublasGemmEx with
// beta = 1 adds the product, so y is rounded to `dtype` once for the product.
void linear_cuda(const void* x, int64_t x_stride, int64_t m, const void* w, const void* bias,
                 int64_t n, int64_t k, void* y, int64_t y_stride, bool accumulate, DType dtype,
                 cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
