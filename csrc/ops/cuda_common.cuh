// Helpers shared by the CUDA op kernels (internal to csrc/ops/*_cuda.cu).
//
// Every kernel reads and writes its activations in one storage type T (float,
// __half or __nv_bfloat16) and computes in float32. The host entry points take
// a DType and dispatch to the template instance with PALI_CUDA_DISPATCH_FLOAT.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"

namespace pali::cuda_detail {

// ---- conversions ----------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- vector loads ------------------------------------------------------------
// kVec<T> elements of T fill 16 bytes.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// Loads N elements (N * sizeof(T) a multiple of 16, p 16-byte aligned) as
// 16-byte loads and widens them to float.
template <typename T, int N = kVec<T>>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  static_assert((N * sizeof(T)) % 16 == 0, "whole 16-byte chunks only");
  constexpr int kChunks = static_cast<int>(N * sizeof(T) / 16);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const uint4 raw = reinterpret_cast<const uint4*>(p)[c];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec<T>; ++i) out[c * kVec<T> + i] = to_float(e[i]);
  }
}

// Narrows N floats to T and stores them as 16-byte stores (p 16-byte aligned).
template <typename T, int N = kVec<T>>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  static_assert((N * sizeof(T)) % 16 == 0, "whole 16-byte chunks only");
  constexpr int kChunks = static_cast<int>(N * sizeof(T) / 16);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec<T>; ++i) e[i] = from_float<T>(in[c * kVec<T> + i]);
    reinterpret_cast<uint4*>(p)[c] = raw;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- reductions -------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `scratch` holds 32 floats; the call synchronizes the block
// and may be called again with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch free (a previous call may still be reading it)
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// ---- device properties ---------------------------------------------------------
// Multiprocessors of the current device (cached per device).
inline int sm_count() {
  static int cached[64] = {};
  int dev = 0;
  PALI_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0) {
    int n = 0;
    PALI_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cached[dev] = n > 0 ? n : 1;
  }
  return cached[dev];
}

// Raises a kernel's dynamic shared-memory limit on the current device: by
// default dynamic + static shared memory must stay within 48 KB, so any large
// dynamic size asks first (cheap enough to do before every launch).
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 32 * 1024)
    PALI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

}  // namespace pali::cuda_detail

// Runs `__VA_ARGS__` with `scalar_t` bound to the storage type of `dtype`
// (float32, float16 or bfloat16); any other dtype raises InvalidArgument.
#define PALI_CUDA_DISPATCH_FLOAT(dtype, what, ...)                                          \
  do {                                                                                      \
    switch (dtype) {                                                                        \
      case ::pali::DType::f32: {                                                            \
        using scalar_t = float;                                                             \
        __VA_ARGS__;                                                                        \
        break;                                                                              \
      }                                                                                     \
      case ::pali::DType::f16: {                                                            \
        using scalar_t = __half;                                                            \
        __VA_ARGS__;                                                                        \
        break;                                                                              \
      }                                                                                     \
      case ::pali::DType::bf16: {                                                           \
        using scalar_t = __nv_bfloat16;                                                     \
        __VA_ARGS__;                                                                        \
        break;                                                                              \
      }                                                                                     \
      default:                                                                              \
        throw ::pali::InvalidArgument(::pali::str_cat(                                      \
            what, ": dtype must be float32, float16 or bfloat16, got ", ::pali::dtype_name(dtype))); \
    }                                                                                       \
  } while (0)

// After a launch: a launch error (bad configuration, no device) becomes an exception.
#define PALI_CUDA_CHECK_LAUNCH() PALI_CUDA_CHECK(cudaGetLastError())
