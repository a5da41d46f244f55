// CUDA LayerNorm: one block per row. The row is read once from global memory
// (16-byte loads when aligned), kept in shared memory as float32, and the mean
// and the biased variance are computed in two passes over that copy (the same
// cancellation-safe form as the CPU op), then normalized and written back.
#include <algorithm>

#include "ops/cuda_common.cuh"
#include "ops/layer_norm_cuda.h"

namespace pali {
namespace {

using namespace cuda_detail;

constexpr int kChunk = 8;  // elements per vector access (16 B of half, 32 B of float)

template <typename T>
__global__ void layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ gamma,
                                  const T* __restrict__ beta, T* y, int64_t d, float eps, bool vec) {
  extern __shared__ float row[];
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * d;
  T* yr = y + blockIdx.x * d;
  float s = 0.0f;
  if (vec) {
    for (int64_t c = threadIdx.x * kChunk; c < d; c += blockDim.x * kChunk) {
      float v[kChunk];
      load_vec<T, kChunk>(xr + c, v);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        row[c + i] = v[i];
        s += v[i];
      }
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float v = to_float(xr[c]);
      row[c] = v;
      s += v;
    }
  }
  const float mean = block_sum(s, scratch) / static_cast<float>(d);  // synchronizes: row complete
  float q = 0.0f;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float t = row[c] - mean;
    q += t * t;
  }
  const float var = block_sum(q, scratch) / static_cast<float>(d);
  const float rstd = rsqrtf(var + eps);
  if (vec) {
    for (int64_t c = threadIdx.x * kChunk; c < d; c += blockDim.x * kChunk) {
      float g[kChunk], b[kChunk], o[kChunk];
      if (gamma) load_vec<T, kChunk>(gamma + c, g);
      if (beta) load_vec<T, kChunk>(beta + c, b);
#pragma unroll
      for (int i = 0; i < kChunk; ++i)
        o[i] = (row[c + i] - mean) * rstd * (gamma ? g[i] : 1.0f) + (beta ? b[i] : 0.0f);
      store_vec<T, kChunk>(yr + c, o);
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float o = (row[c] - mean) * rstd;
      if (gamma) o *= to_float(gamma[c]);
      if (beta) o += to_float(beta[c]);
      yr[c] = from_float<T>(o);
    }
  }
}

}  // namespace

void layer_norm_cuda(const void* x, int64_t m, int64_t d, const void* gamma, const void* beta,
                     float eps, void* y, DType dtype, cudaStream_t stream) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "layer_norm_cuda: bad sizes m=", m, " d=", d);
  PALI_CHECK_ARG(d <= 12288, "layer_norm_cuda: d=", d, " above the supported 12288");
  PALI_CHECK_ARG(m <= 0x7fffffff, "layer_norm_cuda: too many rows");
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "layer_norm_cuda: null x or y");
  const bool vec = d % kChunk == 0 && aligned16(x) && aligned16(y) && (!gamma || aligned16(gamma)) &&
                   (!beta || aligned16(beta));
  const int64_t work = vec ? d / kChunk : d;
  const int threads = static_cast<int>(std::min<int64_t>(512, std::max<int64_t>(32, (work + 31) / 32 * 32)));
  const size_t smem = static_cast<size_t>(d) * sizeof(float);
  PALI_CUDA_DISPATCH_FLOAT(dtype, "layer_norm_cuda", {
    allow_dynamic_smem(layer_norm_kernel<scalar_t>, smem);
    layer_norm_kernel<scalar_t><<<static_cast<unsigned>(m), threads, smem, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(gamma),
        static_cast<const scalar_t*>(beta), static_cast<scalar_t*>(y), d, eps, vec);
  });
  PALI_CUDA_CHECK_LAUNCH();
}

}  // namespace pali
