// CUDA RMSNorm and residual add + RMSNorm: one block per row. The (updated)
// residual row is read once (and written once), kept in shared memory as
// float32 for the second pass, so the fused op moves residual + delta in and
// residual + y out, one pass over memory.
#include <algorithm>

#include "ops/cuda_common.cuh"
#include "ops/rms_norm_cuda.h"

namespace pali {
namespace {

using namespace cuda_detail;

constexpr int kChunk = 8;

// TR: residual storage, T: delta / weight / y storage.
template <typename TR, typename T>
__global__ void add_rms_norm_kernel(TR* residual, const T* __restrict__ delta,
                                    const T* __restrict__ weight, T* y, int64_t d, float eps,
                                    bool write_residual, bool vec) {
  extern __shared__ float row[];
  __shared__ float scratch[32];
  TR* rr = residual + blockIdx.x * d;
  const T* dr = delta ? delta + blockIdx.x * d : nullptr;
  T* yr = y + blockIdx.x * d;
  float ss = 0.0f;
  if (vec) {
    for (int64_t c = threadIdx.x * kChunk; c < d; c += blockDim.x * kChunk) {
      float v[kChunk];
      load_vec<TR, kChunk>(rr + c, v);
      if (dr) {
        float dv[kChunk];
        load_vec<T, kChunk>(dr + c, dv);
#pragma unroll
        for (int i = 0; i < kChunk; ++i) v[i] = to_float(from_float<TR>(v[i] + dv[i]));
        if (write_residual) store_vec<TR, kChunk>(rr + c, v);
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        row[c + i] = v[i];
        ss += v[i] * v[i];
      }
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float v = to_float(rr[c]);
      if (dr) {
        const TR sum = from_float<TR>(v + to_float(dr[c]));
        if (write_residual) rr[c] = sum;
        v = to_float(sum);
      }
      row[c] = v;
      ss += v * v;
    }
  }
  const float rs = rsqrtf(block_sum(ss, scratch) / static_cast<float>(d) + eps);
  if (vec) {
    for (int64_t c = threadIdx.x * kChunk; c < d; c += blockDim.x * kChunk) {
      float w[kChunk], o[kChunk];
      if (weight) load_vec<T, kChunk>(weight + c, w);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) o[i] = row[c + i] * rs * (weight ? w[i] : 1.0f);
      store_vec<T, kChunk>(yr + c, o);
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float o = row[c] * rs;
      if (weight) o *= to_float(weight[c]);
      yr[c] = from_float<T>(o);
    }
  }
}

template <typename TR, typename T>
void launch(TR* residual, const T* delta, const T* weight, T* y, int64_t m, int64_t d, float eps,
            bool write_residual, cudaStream_t stream) {
  const bool vec = d % kChunk == 0 && aligned16(residual) && aligned16(y) &&
                   (!delta || aligned16(delta)) && (!weight || aligned16(weight));
  const int64_t work = vec ? d / kChunk : d;
  const int threads = static_cast<int>(std::min<int64_t>(512, std::max<int64_t>(32, (work + 31) / 32 * 32)));
  allow_dynamic_smem(add_rms_norm_kernel<TR, T>, d * sizeof(float));
  add_rms_norm_kernel<TR, T><<<static_cast<unsigned>(m), threads, d * sizeof(float), stream>>>(
      residual, delta, weight, y, d, eps, write_residual, vec);
  PALI_CUDA_CHECK_LAUNCH();
}

void check_sizes(const char* what, int64_t m, int64_t d) {
  PALI_CHECK_ARG(m >= 0 && d > 0, what, ": bad sizes m=", m, " d=", d);
  PALI_CHECK_ARG(d <= 12288, what, ": d=", d, " above the supported 12288");
  PALI_CHECK_ARG(m <= 0x7fffffff, what, ": too many rows");
}

}  // namespace

void rms_norm_cuda(const void* x, int64_t m, int64_t d, const void* weight, float eps, void* y,
                   DType dtype, cudaStream_t stream) {
  check_sizes("rms_norm_cuda", m, d);
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "rms_norm_cuda: null x or y");
  PALI_CUDA_DISPATCH_FLOAT(dtype, "rms_norm_cuda", {
    launch<scalar_t, scalar_t>(static_cast<scalar_t*>(const_cast<void*>(x)), nullptr,
                               static_cast<const scalar_t*>(weight), static_cast<scalar_t*>(y), m, d,
                               eps, false, stream);
  });
}

void add_rms_norm_cuda(void* residual, DType residual_dtype, const void* delta, int64_t m, int64_t d,
                       const void* weight, float eps, void* y, DType dtype, cudaStream_t stream) {
  check_sizes("add_rms_norm_cuda", m, d);
  if (m == 0) return;
  PALI_CHECK_ARG(residual && y, "add_rms_norm_cuda: null residual or y");
  PALI_CHECK_ARG(y != residual && y != delta, "add_rms_norm_cuda: y must not alias residual or delta");
  PALI_CHECK_ARG(residual_dtype == dtype || residual_dtype == DType::f32,
                 "add_rms_norm_cuda: residual must be float32 or ", dtype_name(dtype), ", got ",
                 dtype_name(residual_dtype));
  if (residual_dtype == DType::f32 && dtype != DType::f32) {
    PALI_CUDA_DISPATCH_FLOAT(dtype, "add_rms_norm_cuda", {
      launch<float, scalar_t>(static_cast<float*>(residual), static_cast<const scalar_t*>(delta),
                              static_cast<const scalar_t*>(weight), static_cast<scalar_t*>(y), m, d,
                              eps, true, stream);
    });
  } else {
    PALI_CUDA_DISPATCH_FLOAT(dtype, "add_rms_norm_cuda", {
      launch<scalar_t, scalar_t>(static_cast<scalar_t*>(residual), static_cast<const scalar_t*>(delta),
                                 static_cast<const scalar_t*>(weight), static_cast<scalar_t*>(y), m, d,
                                 eps, true, stream);
    });
  }
}

}  // namespace pali
