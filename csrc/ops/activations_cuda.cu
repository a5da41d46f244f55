// CUDA activations: elementwise, memory-bound, so one grid-stride pass with
// 16-byte accesses when the pointers and sizes allow, scalar otherwise.
//
// gelu_tanh(x) = 0.5 x (1 + tanh(u)) is evaluated as x / (1 + exp(-2u)), the
// same function without the cancellation of 1 + tanh(u) for negative x.
#include <algorithm>

#include "ops/activations_cuda.h"
#include "ops/cuda_common.cuh"

namespace pali {
namespace {

using namespace cuda_detail;

constexpr int kChunk = 8;

template <Activation A>
__device__ __forceinline__ float act(float x) {
  if constexpr (A == Activation::gelu_tanh) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
  } else if constexpr (A == Activation::silu) {
    return x / (1.0f + expf(-x));
  } else {
    return x > 0.0f ? x : (x == x ? 0.0f : x);  // relu, NaN kept
  }
}

template <typename T, Activation A>
__global__ void activation_kernel(const T* x, T* y, int64_t n, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    for (; i < n / kChunk; i += stride) {
      float v[kChunk];
      load_vec<T, kChunk>(x + i * kChunk, v);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) v[e] = act<A>(v[e]);
      store_vec<T, kChunk>(y + i * kChunk, v);
    }
  } else {
    for (; i < n; i += stride) y[i] = from_float<T>(act<A>(to_float(x[i])));
  }
}

// out[r, c] = act(in[r, c]) * in[r, f + c].
template <typename T, Activation A>
__global__ void gated_kernel(const T* __restrict__ in, int64_t m, int64_t f, T* __restrict__ out,
                             bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    const int64_t per_row = f / kChunk;
    for (; i < m * per_row; i += stride) {
      const int64_t r = i / per_row, c = (i % per_row) * kChunk;
      float g[kChunk], u[kChunk];
      load_vec<T, kChunk>(in + r * 2 * f + c, g);
      load_vec<T, kChunk>(in + r * 2 * f + f + c, u);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) g[e] = act<A>(g[e]) * u[e];
      store_vec<T, kChunk>(out + r * f + c, g);
    }
  } else {
    for (; i < m * f; i += stride) {
      const int64_t r = i / f, c = i % f;
      out[i] = from_float<T>(act<A>(to_float(in[r * 2 * f + c])) * to_float(in[r * 2 * f + f + c]));
    }
  }
}

unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sm_count()) * 32)));
}

template <typename T>
void launch_activation(const T* x, T* y, int64_t n, Activation a, cudaStream_t stream) {
  const bool vec = n % kChunk == 0 && aligned16(x) && aligned16(y);
  const int threads = 256;
  const unsigned grid = grid_for(vec ? n / kChunk : n, threads);
  switch (a) {
    case Activation::gelu_tanh:
      activation_kernel<T, Activation::gelu_tanh><<<grid, threads, 0, stream>>>(x, y, n, vec);
      break;
    case Activation::silu:
      activation_kernel<T, Activation::silu><<<grid, threads, 0, stream>>>(x, y, n, vec);
      break;
    case Activation::relu:
      activation_kernel<T, Activation::relu><<<grid, threads, 0, stream>>>(x, y, n, vec);
      break;
  }
  PALI_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_gated(const T* in, int64_t m, int64_t f, T* out, Activation a, cudaStream_t stream) {
  const bool vec = f % kChunk == 0 && aligned16(in) && aligned16(out);
  const int threads = 256;
  const unsigned grid = grid_for(vec ? m * f / kChunk : m * f, threads);
  switch (a) {
    case Activation::gelu_tanh:
      gated_kernel<T, Activation::gelu_tanh><<<grid, threads, 0, stream>>>(in, m, f, out, vec);
      break;
    case Activation::silu:
      gated_kernel<T, Activation::silu><<<grid, threads, 0, stream>>>(in, m, f, out, vec);
      break;
    case Activation::relu:
      gated_kernel<T, Activation::relu><<<grid, threads, 0, stream>>>(in, m, f, out, vec);
      break;
  }
  PALI_CUDA_CHECK_LAUNCH();
}

}  // namespace

void activation_cuda(const void* x, void* y, int64_t n, Activation act, DType dtype,
                     cudaStream_t stream) {
  PALI_CHECK_ARG(n >= 0, "activation_cuda: bad size ", n);
  if (n == 0) return;
  PALI_CHECK_ARG(x && y, "activation_cuda: null pointer");
  PALI_CUDA_DISPATCH_FLOAT(dtype, "activation_cuda", {
    launch_activation<scalar_t>(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n, act,
                                stream);
  });
}

void gated_activation_cuda(const void* in, int64_t m, int64_t f, void* out, Activation act,
                           DType dtype, cudaStream_t stream) {
  PALI_CHECK_ARG(m >= 0 && f >= 0, "gated_activation_cuda: bad sizes m=", m, " f=", f);
  if (m == 0 || f == 0) return;
  PALI_CHECK_ARG(in && out, "gated_activation_cuda: null pointer");
  PALI_CUDA_DISPATCH_FLOAT(dtype, "gated_activation_cuda", {
    launch_gated<scalar_t>(static_cast<const scalar_t*>(in), m, f, static_cast<scalar_t*>(out), act,
                           stream);
  });
}

}  // namespace pali
