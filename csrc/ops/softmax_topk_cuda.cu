// CUDA log_softmax + top-k: one block of 256 threads per row, one read of the
// row for both.
//
// Each element becomes a 64-bit key (order-preserving bits of the value in the
// high word, NaN above +inf, -0 as +0; ~index in the low word), so "larger key"
// is exactly "ranks first, ties by lower index" and keys are all distinct.
// Each warp keeps a sorted top-64 list in registers (positions lane and
// 32 + lane). Per 32 elements it ballots the keys above its current k-th key;
// each such candidate is inserted with one ballot (its position) and two
// shuffles (the shift), after which the threshold rises. Random logits give
// about k (1 + ln(n / k)) insertions per warp; sorted ascending input is the
// worst case (one per element), slower but still correct. Alongside, each
// thread keeps an online (max, sum exp) pair. The 8 warps' lists (8k keys) are
// then merged by warp 0 with the same insertion, and the (max, sum) pairs are
// combined into log Z; values are re-read from x at the winning indices.
#include <cmath>

#include "ops/cuda_common.cuh"
#include "ops/softmax_topk_cuda.h"

namespace pali {
namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ uint64_t make_key(float v, int64_t index) {
  uint32_t u;
  if (v != v) {
    u = 0xffffffffu;  // NaN: above everything
  } else {
    if (v == 0.0f) v = 0.0f;  // -0 ranks as +0
    u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(index));
}

__device__ __forceinline__ int32_t key_index(uint64_t key) {
  return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// A warp's sorted (descending) list of 64 keys: e0 at position lane, e1 at 32 + lane.
// Key 0 never comes from an element (the smallest element key has a high word
// >= 0x007fffff), so it marks an empty slot.
struct WarpList {
  uint64_t e0 = 0, e1 = 0;

  __device__ __forceinline__ uint64_t at(int pos) const {  // pos warp-uniform
    const uint64_t a = __shfl_sync(kFull, e0, pos & 31);
    const uint64_t b = __shfl_sync(kFull, e1, pos & 31);
    return pos < 32 ? a : b;
  }

  __device__ __forceinline__ void insert(uint64_t cand, int lane) {
    const int p = __popc(__ballot_sync(kFull, e0 > cand)) + __popc(__ballot_sync(kFull, e1 > cand));
    const uint64_t up0 = __shfl_up_sync(kFull, e0, 1);
    const uint64_t up1 = __shfl_up_sync(kFull, e1, 1);
    const uint64_t last0 = __shfl_sync(kFull, e0, 31);
    const uint64_t prev1 = lane == 0 ? last0 : up1;
    const int pos1 = 32 + lane;
    e0 = lane < p ? e0 : (lane == p ? cand : up0);
    e1 = pos1 < p ? e1 : (pos1 == p ? cand : prev1);
  }

  // Offers one key per lane (0 = none); keeps the k largest.
  __device__ __forceinline__ void offer(uint64_t key, int k, int lane) {
    uint64_t thr = at(k - 1);
    bool pending = key > thr;
    unsigned mask = __ballot_sync(kFull, pending);
    while (mask) {
      const int src = __ffs(mask) - 1;
      const uint64_t cand = __shfl_sync(kFull, key, src);
      insert(cand, lane);
      thr = at(k - 1);
      if (lane == src) pending = false;
      pending = pending && key > thr;
      mask = __ballot_sync(kFull, pending);
    }
  }
};

// Online softmax statistics: (max, sum of exp(x - max)); max = -inf means empty.
__device__ __forceinline__ void stats_add(float& m, float& s, float x) {
  if (x == -INFINITY) return;
  if (x > m) {
    s = (m == -INFINITY ? 0.0f : s * expf(m - x)) + 1.0f;
    m = x;
  } else {
    s += expf(x - m);
  }
}

__device__ __forceinline__ void stats_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;
  s = (m == -INFINITY ? 0.0f : s * expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
  m = mm;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) log_softmax_topk_kernel(
    const T* __restrict__ x, int64_t v, int k, bool log_probs, float* __restrict__ values,
    int32_t* __restrict__ indices, float* __restrict__ y) {
  __shared__ uint64_t cand[kWarps * kCudaTopkMax];
  __shared__ float sm_m[kWarps], sm_s[kWarps];
  __shared__ int sm_nan[kWarps];
  __shared__ float sm_logz;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * v;

  float m = -INFINITY, s = 0.0f;
  bool nan = false;
  WarpList list;
  for (int64_t base = static_cast<int64_t>(warp) * 32; base < v; base += kThreads) {
    const int64_t j = base + lane;
    uint64_t key = 0;
    if (j < v) {
      const float xv = to_float(xr[j]);
      if (xv != xv) nan = true; else stats_add(m, s, xv);
      key = make_key(xv, j);
    }
    if (k > 0) list.offer(key, k, lane);
  }

  // Combine the statistics: warp, then block.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(kFull, m, o), s2 = __shfl_xor_sync(kFull, s, o);
    stats_merge(m, s, m2, s2);
  }
  nan = __any_sync(kFull, nan);
  if (lane == 0) {
    sm_m[warp] = m;
    sm_s[warp] = s;
    sm_nan[warp] = nan;
  }
  if (k > 0) {
    if (lane < k) cand[warp * kCudaTopkMax + lane] = list.e0;
    if (32 + lane < k) cand[warp * kCudaTopkMax + 32 + lane] = list.e1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float bm = -INFINITY, bs = 0.0f;
    bool bn = false;
    for (int w = 0; w < kWarps; ++w) {
      stats_merge(bm, bs, sm_m[w], sm_s[w]);
      bn = bn || sm_nan[w];
    }
    // All -inf: log Z = -inf and every output -inf (never NaN).
    sm_logz = bn ? NAN : (bm == -INFINITY ? -INFINITY : bm + logf(bs));
  }
  __syncthreads();
  const float logz = sm_logz;
  const bool all_neg_inf = logz == -INFINITY;

  if (k > 0 && warp == 0) {
    WarpList merged;
    for (int base = 0; base < kWarps * k; base += 32) {
      const int i = base + lane;
      const uint64_t key = i < kWarps * k ? cand[(i / k) * kCudaTopkMax + i % k] : 0;
      merged.offer(key, k, lane);
    }
    const int64_t out = static_cast<int64_t>(blockIdx.x) * k;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int pos = half * 32 + lane;
      const uint64_t key = half == 0 ? merged.e0 : merged.e1;
      if (pos < k) {
        const int32_t idx = key_index(key);
        const float raw = to_float(xr[idx]);
        indices[out + pos] = idx;
        values[out + pos] = !log_probs ? raw : (all_neg_inf ? -INFINITY : raw - logz);
      }
    }
  }
  if (y) {
    float* yr = y + static_cast<int64_t>(blockIdx.x) * v;
    for (int64_t j = threadIdx.x; j < v; j += kThreads)
      yr[j] = all_neg_inf ? -INFINITY : to_float(xr[j]) - logz;
  }
}

}  // namespace

void log_softmax_topk_cuda(const void* x, DType dtype, int64_t m, int64_t v, int64_t k, bool log_probs,
                           float* values, int32_t* indices, float* y, cudaStream_t stream) {
  PALI_CHECK_ARG(m >= 0 && v > 0, "log_softmax_topk_cuda: bad sizes m=", m, " v=", v);
  PALI_CHECK_ARG(k >= 0 && k <= kCudaTopkMax && k <= v, "log_softmax_topk_cuda: k=", k,
                 " must be in [0, min(v, ", kCudaTopkMax, ")]");
  PALI_CHECK_ARG(v < 0x7fffffff && m <= 0x7fffffff, "log_softmax_topk_cuda: sizes above 2^31");
  if (m == 0) return;
  PALI_CHECK_ARG(x, "log_softmax_topk_cuda: null x");
  PALI_CHECK_ARG(k == 0 || (values && indices), "log_softmax_topk_cuda: null values or indices");
  PALI_CUDA_DISPATCH_FLOAT(dtype, "log_softmax_topk_cuda", {
    log_softmax_topk_kernel<scalar_t><<<static_cast<unsigned>(m), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), v, static_cast<int>(k), log_probs, values, indices, y);
  });
  PALI_CUDA_CHECK_LAUNCH();
}

}  // namespace pali
