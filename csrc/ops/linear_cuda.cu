// CUDA linear layer: a bias pre-pass plus one cublasGemmEx.
//
// Row-major y[m, N] = x[m, K] · W[N, K]ᵀ is, in cuBLAS's column-major terms,
// yᵀ[N, m] = op(W)[N, K] · xᵀ[K, m] with W read as a K x N column-major matrix
// (lda = K) transposed, and x as K x m (ldb = x_stride): a "TN" GEMM, the
// layout cuBLAS's tensor-core kernels prefer, with no copy of the weight.
#include <algorithm>
#include <climits>

#include "ops/cuda_common.cuh"
#include "ops/linear_cuda.h"

namespace pali {
namespace {

using namespace cuda_detail;

// y[r, c] = (add ? y[r, c] : 0) + (bias ? bias[c] : 0).
template <typename T>
__global__ void bias_rows_kernel(T* y, int64_t y_stride, int64_t m, int64_t n,
                                 const T* __restrict__ bias, bool add) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m * n; i += stride) {
    const int64_t r = i / n, c = i % n;
    T* p = y + r * y_stride + c;
    float v = add ? to_float(*p) : 0.0f;
    if (bias) v += to_float(bias[c]);
    *p = from_float<T>(v);
  }
}

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::f16:
      return CUDA_R_16F;
    case DType::bf16:
      return CUDA_R_16BF;
    default:
      throw InvalidArgument(str_cat("linear_cuda: dtype must be float32, float16 or bfloat16, got ",
                                    dtype_name(dtype)));
  }
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw RuntimeFailure(str_cat(what, " failed: ", cublasGetStatusString(status), " (status ",
                                 static_cast<int>(status), ")"));
}

}  // namespace

void linear_cuda(const void* x, int64_t x_stride, int64_t m, const void* w, const void* bias,
                 int64_t n, int64_t k, void* y, int64_t y_stride, bool accumulate, DType dtype,
                 cudaStream_t stream) {
  PALI_CHECK_ARG(m >= 0 && n >= 0 && k >= 0, "linear_cuda: bad sizes m=", m, " n=", n, " k=", k);
  PALI_CHECK_ARG(x_stride >= k && y_stride >= n, "linear_cuda: row strides must be >= K and >= N");
  PALI_CHECK_ARG(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && x_stride <= INT_MAX && y_stride <= INT_MAX,
                 "linear_cuda: sizes above the 32-bit range of cuBLAS");
  const cudaDataType_t type = cuda_type(dtype);
  if (m == 0 || n == 0) return;
  PALI_CHECK_ARG(y && (k == 0 || (x && w)), "linear_cuda: null pointer");

  // Pre-pass: y = bias (or y += bias, or y = 0 when there is no product to add to).
  const bool need_prepass = bias || (!accumulate && k == 0);
  if (need_prepass) {
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((m * n + threads - 1) / threads, int64_t(sm_count()) * 32);
    PALI_CUDA_DISPATCH_FLOAT(dtype, "linear_cuda", {
      bias_rows_kernel<scalar_t><<<static_cast<unsigned>(std::max<int64_t>(1, blocks)), threads, 0, stream>>>(
          static_cast<scalar_t*>(y), y_stride, m, n, static_cast<const scalar_t*>(bias), accumulate);
    });
    PALI_CUDA_CHECK_LAUNCH();
  }
  if (k == 0) return;

  const float alpha = 1.0f;
  const float beta = (accumulate || bias) ? 1.0f : 0.0f;
  cublasHandle_t handle = cublas_handle();
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                            static_cast<int>(k), &alpha, w, type, static_cast<int>(k), x, type,
                            static_cast<int>(x_stride), &beta, y, type, static_cast<int>(y_stride),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

}  // namespace pali
