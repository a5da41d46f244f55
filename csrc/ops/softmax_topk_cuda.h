// CUDA row-wise log_softmax and top-k over a vocabulary, fused in one pass
// (see ops/softmax_topk.h for the semantics: ties by the lower index, NaN
// ranks above every number, an all -inf row gives -inf).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace pali {

constexpr int64_t kCudaTopkMax = 64;

// x: device [m, v] in `dtype` (float32, float16, bfloat16).
// values, indices: device [m, k] (float32, int32), sorted descending; the
// values are log-probabilities when `log_probs`, else the raw x (as float32).
// y: device [m, v] float32 log_softmax(x), or null to skip writing it.
// 0 <= k <= min(v, 64); k = 0 computes only y.
void log_softmax_topk_cuda(const void* x, DType dtype, int64_t m, int64_t v, int64_t k, bool log_probs,
                           float* values, int32_t* indices, float* y, cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
