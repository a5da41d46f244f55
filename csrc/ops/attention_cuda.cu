// CUDA attention kernels (see attention_cuda.h for the contract).
//
// Prefill, per block: one (batch, head) and 32 query rows; 128 threads
// (4 warps x 8 rows, 4 lanes per row). Key tiles of 32 rows of K and V are
// staged in shared memory as float32 (16-byte global loads when aligned), so
// every key is read from device memory once per 32 queries. Per tile a lane
// computes 8 scores of its row (float4 reads of Q and K from shared memory:
// 9 loads per 32 FMAs), the row max and sum go through two shuffles among the
// row's 4 lanes, the probabilities go to shared memory, and each lane
// accumulates a quarter of the row's output (D/4 floats in registers, float4
// reads of V). Row strides are padded by 4 floats so that the 8 rows a warp
// reads at once fall on different banks. Scores are never stored beyond the
// 32x32 tile: the online softmax rescales the running output when the row
// max grows. Arithmetic is float32 on CUDA cores: simple and exact to float32
// accumulation, but not the tensor-core path (see docs/cuda.md).
//
// Decode, per block: one (batch, head, split of the cache). The block walks its
// split in tiles of 64 keys (K and V staged in shared memory, each key's cache
// slot read from the beam table when there is one), two threads per key for
// the scores, one thread per output dimension for P·V. With several splits,
// each writes (unnormalized output, max, sum) to the workspace and a second
// kernel merges them with the usual log-sum-exp rescaling.
#include <algorithm>
#include <atomic>

#include "ops/attention_cuda.h"
#include "ops/cuda_common.cuh"

namespace pali {
namespace {

using namespace cuda_detail;

struct Args {
  int64_t batch, heads, q_len, kv_len;
  float scale;
  const void* q;
  int64_t qrs, qbs;
  const void* k;
  int64_t krs, kbs;
  const void* v;
  int64_t vrs, vbs;
  void* out;
  int64_t ors, obs;
  const void* mask;
  int mask_type;  // 0 none, 1 int32, 2 uint8
  int64_t mbs;
  bool causal;
  int64_t q_offset;
  const float* rel;
  int64_t rel_stride, rel_offset;
  int64_t div;
  const int32_t* kv_index;
  int64_t kv_index_stride;
  bool vec;  // all rows 16-byte aligned: vector loads
  // decode
  int64_t chunk;  // keys per split
  int splits;
  float* ws;
};

__device__ __forceinline__ bool key_allowed(const Args& a, int64_t kvb, int64_t j) {
  if (a.mask_type == 0) return true;
  if (a.mask_type == 1) return static_cast<const int32_t*>(a.mask)[kvb * a.mbs + j] != 0;
  return static_cast<const uint8_t*>(a.mask)[kvb * a.mbs + j] != 0;
}

__device__ __forceinline__ int64_t kv_slot(const Args& a, int64_t b, int64_t j) {
  return a.kv_index ? static_cast<int64_t>(a.kv_index[b * a.kv_index_stride + j]) : b / a.div;
}

// Copies `nrows` rows of D elements (row r at rowptr(r), or zeros where it is
// null) into shared memory as float32 at row stride ds, zero-filling columns
// [D, DP). All threads of the block take part.
template <typename T, int D, int DP, typename RowPtr>
__device__ __forceinline__ void load_tile(float* dst, int ds, int nrows, RowPtr rowptr, bool vec) {
  constexpr int E = kVec<T>;
  static_assert(D % E == 0, "head_dim must be a multiple of 8");
  constexpr int CPR = D / E;
  if (vec) {
    for (int idx = threadIdx.x; idx < nrows * CPR; idx += blockDim.x) {
      const int r = idx / CPR, ch = idx % CPR;
      const T* src = rowptr(r);
      float vals[E];
      if (src) {
        load_vec<T>(src + ch * E, vals);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) vals[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) dst[r * ds + ch * E + e] = vals[e];
    }
  } else {
    for (int idx = threadIdx.x; idx < nrows * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      const T* src = rowptr(r);
      dst[r * ds + d] = src ? to_float(src[d]) : 0.0f;
    }
  }
  if constexpr (DP > D) {
    for (int idx = threadIdx.x; idx < nrows * (DP - D); idx += blockDim.x)
      dst[(idx / (DP - D)) * ds + D + idx % (DP - D)] = 0.0f;
  }
}

// ---- prefill ------------------------------------------------------------------

constexpr int kBQ = 32, kBK = 32, kThreads = 128;

template <int D>
struct PrefillLayout {
  static constexpr int DP = (D + 15) / 16 * 16;
  static constexpr int QS = DP + 4;   // row stride of the Q, K, V tiles (floats)
  static constexpr int PS = kBK + 4;  // row stride of the probability tile
  static constexpr size_t bytes = sizeof(float) * (size_t(kBQ + 2 * kBK) * QS + size_t(kBQ) * PS + kBK);
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_prefill_kernel(Args a) {
  using L = PrefillLayout<D>;
  constexpr int DP = L::DP, QS = L::QS, PS = L::PS;
  constexpr int NCH = DP / 16;  // float4 output chunks per lane
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);
  float* Ks = Qs + kBQ * QS;
  float* Vs = Ks + kBK * QS;
  float* Ps = Vs + kBK * QS;
  float* Ms = Ps + kBQ * PS;

  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kBQ;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rl = warp * 8 + (lane >> 2), sub = lane & 3;
  const int64_t i = i0 + rl;
  const bool row_valid = i < a.q_len;
  const int64_t pos = a.q_offset + i;
  const int64_t kvb = b / a.div;

  const T* qb = static_cast<const T*>(a.q) + b * a.qbs + h * D;
  load_tile<T, D, DP>(Qs, QS, kBQ,
                      [&](int r) -> const T* { return i0 + r < a.q_len ? qb + (i0 + r) * a.qrs : nullptr; },
                      a.vec);

  const int64_t q_last = min(a.q_len, i0 + kBQ) - 1;
  const int64_t kv_end = a.causal ? min(a.kv_len, a.q_offset + q_last + 1) : a.kv_len;
  const float* bias_row = (a.rel && row_valid) ? a.rel + h * a.rel_stride + a.rel_offset - pos : nullptr;
  const T* kbase = static_cast<const T*>(a.k) + h * D;
  const T* vbase = static_cast<const T*>(a.v) + h * D;

  float o[NCH][4];
#pragma unroll
  for (int c = 0; c < NCH; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;

  for (int64_t kt = 0; kt < kv_end; kt += kBK) {
    __syncthreads();  // the previous tile is consumed (and the Q tile written)
    load_tile<T, D, DP>(Ks, QS, kBK, [&](int r) -> const T* {
      const int64_t j = kt + r;
      return j < kv_end ? kbase + kv_slot(a, b, j) * a.kbs + j * a.krs : nullptr;
    }, a.vec);
    load_tile<T, D, DP>(Vs, QS, kBK, [&](int r) -> const T* {
      const int64_t j = kt + r;
      return j < kv_end ? vbase + kv_slot(a, b, j) * a.vbs + j * a.vrs : nullptr;
    }, a.vec);
    for (int r = threadIdx.x; r < kBK; r += kThreads) {
      const int64_t j = kt + r;
      Ms[r] = (j < kv_end && key_allowed(a, kvb, j)) ? 0.0f : -INFINITY;
    }
    __syncthreads();

    // Scores of row rl against keys sub + 4 jj.
    float s[8];
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) s[jj] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < DP; d += 4) {
      const float4 qv = *reinterpret_cast<const float4*>(Qs + rl * QS + d);
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        const float4 kv = *reinterpret_cast<const float4*>(Ks + (sub + 4 * jj) * QS + d);
        s[jj] = fmaf(qv.x, kv.x, fmaf(qv.y, kv.y, fmaf(qv.z, kv.z, fmaf(qv.w, kv.w, s[jj]))));
      }
    }
    float tmax = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int c = sub + 4 * jj;
      const int64_t j = kt + c;
      float sc = s[jj] * a.scale + Ms[c];
      if (!row_valid || (a.causal && j > pos)) sc = -INFINITY;
      if (bias_row && sc != -INFINITY) sc += bias_row[j];
      s[jj] = sc;
      tmax = fmaxf(tmax, sc);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float m_new = fmaxf(m_run, tmax);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = expf(m_run - m_use);
    float psum = 0.0f;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const float p = expf(s[jj] - m_use);
      Ps[rl * PS + sub + 4 * jj] = p;
      psum += p;
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    l_run = l_run * corr + psum;
    m_run = m_new;
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      o[c][0] *= corr;
      o[c][1] *= corr;
      o[c][2] *= corr;
      o[c][3] *= corr;
    }
    __syncwarp();  // the row's probabilities come from lanes of this warp
#pragma unroll 4
    for (int kk = 0; kk < kBK; ++kk) {
      const float p = Ps[rl * PS + kk];
#pragma unroll
      for (int c = 0; c < NCH; ++c) {
        const float4 vv = *reinterpret_cast<const float4*>(Vs + kk * QS + 4 * (sub + 4 * c));
        o[c][0] = fmaf(p, vv.x, o[c][0]);
        o[c][1] = fmaf(p, vv.y, o[c][1]);
        o[c][2] = fmaf(p, vv.z, o[c][2]);
        o[c][3] = fmaf(p, vv.w, o[c][3]);
      }
    }
  }

  if (row_valid) {
    T* orow = static_cast<T*>(a.out) + b * a.obs + i * a.ors + h * D;
    const float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      const int col = 4 * (sub + 4 * c);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < D) orow[col + e] = from_float<T>(o[c][e] * inv);
    }
  }
}

// ---- decode -------------------------------------------------------------------

constexpr int kDecThreads = 128, kDecBK = 64, kMaxSplits = 32;

template <int D>
struct DecodeLayout {
  static constexpr int DP = (D + 15) / 16 * 16;
  static constexpr int KS = DP + 1;  // odd: the 2 x 16 rows a warp reads hit distinct banks
  static constexpr size_t bytes = sizeof(float) * (size_t(DP) + size_t(kDecBK) * KS + size_t(kDecBK) * DP + 2 * kDecBK);
};

template <typename T, int D>
__global__ void __launch_bounds__(kDecThreads) attention_decode_kernel(Args a) {
  static_assert(D <= kDecThreads, "one thread per output dimension");
  using L = DecodeLayout<D>;
  constexpr int DP = L::DP, KS = L::KS;
  extern __shared__ float4 smem4[];
  float* qs = reinterpret_cast<float*>(smem4);
  float* Ks = qs + DP;
  float* Vs = Ks + kDecBK * KS;
  float* raw = Vs + kDecBK * DP;
  float* ps = raw + kDecBK;

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int split = blockIdx.x;
  const int t = threadIdx.x, lane = t & 31;
  const int64_t pos = a.q_offset;
  const int64_t kvb = b / a.div;
  const int64_t kv_end = a.causal ? min(a.kv_len, a.q_offset + 1) : a.kv_len;
  const int64_t j_begin = static_cast<int64_t>(split) * a.chunk;
  const int64_t j_end = min(kv_end, j_begin + a.chunk);

  const T* qrow = static_cast<const T*>(a.q) + b * a.qbs + h * D;
  load_tile<T, D, DP>(qs, DP, 1, [&](int) -> const T* { return qrow; }, a.vec);
  const T* kbase = static_cast<const T*>(a.k) + h * D;
  const T* vbase = static_cast<const T*>(a.v) + h * D;
  const float* bias = a.rel ? a.rel + h * a.rel_stride + a.rel_offset - pos : nullptr;

  float o = 0.0f, m_run = -INFINITY, l_run = 0.0f;
  for (int64_t jt = j_begin; jt < j_end; jt += kDecBK) {
    const int n = static_cast<int>(j_end - jt < kDecBK ? j_end - jt : kDecBK);
    __syncthreads();  // previous tile consumed; q written
    load_tile<T, D, DP>(Ks, KS, kDecBK, [&](int r) -> const T* {
      return r < n ? kbase + kv_slot(a, b, jt + r) * a.kbs + (jt + r) * a.krs : nullptr;
    }, a.vec);
    load_tile<T, D, DP>(Vs, DP, kDecBK, [&](int r) -> const T* {
      return r < n ? vbase + kv_slot(a, b, jt + r) * a.vbs + (jt + r) * a.vrs : nullptr;
    }, a.vec);
    __syncthreads();
    {
      const int kk = t >> 1, half = t & 1;
      const float* kr = Ks + kk * KS + half * (DP / 2);
      const float* qh = qs + half * (DP / 2);
      float acc = 0.0f;
#pragma unroll 8
      for (int d = 0; d < DP / 2; ++d) acc = fmaf(qh[d], kr[d], acc);
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      if (half == 0) {
        const int64_t j = jt + kk;
        float sc = -INFINITY;
        if (kk < n && key_allowed(a, kvb, j)) {
          sc = acc * a.scale;
          if (bias) sc += bias[j];
        }
        raw[kk] = sc;
      }
    }
    __syncthreads();
    const float s0 = raw[lane], s1 = raw[lane + 32];
    const float m_new = fmaxf(m_run, warp_max(fmaxf(s0, s1)));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = expf(m_run - m_use);
    const float p0 = expf(s0 - m_use), p1 = expf(s1 - m_use);
    const float tsum = warp_sum(p0 + p1);  // identical in every warp
    if (t < 32) {
      ps[lane] = p0;
      ps[lane + 32] = p1;
    }
    l_run = l_run * corr + tsum;
    m_run = m_new;
    o *= corr;
    __syncthreads();
    if (t < D) {
#pragma unroll 8
      for (int kk = 0; kk < n; ++kk) o = fmaf(ps[kk], Vs[kk * DP + t], o);
    }
  }

  if (a.splits == 1) {
    if (t < D) {
      T* orow = static_cast<T*>(a.out) + b * a.obs + h * D;
      orow[t] = from_float<T>(l_run > 0.0f ? o / l_run : 0.0f);
    }
  } else {
    float* w = a.ws + ((b * a.heads + h) * a.splits + split) * (D + 2);
    if (t < D) w[t] = o;
    if (t == 0) {
      w[D] = m_run;
      w[D + 1] = l_run;
    }
  }
}

template <typename T, int D>
__global__ void attention_decode_combine_kernel(Args a) {
  const int64_t b = blockIdx.y, h = blockIdx.x;
  const float* w = a.ws + (b * a.heads + h) * a.splits * (D + 2);
  float mx = -INFINITY;
  for (int s = 0; s < a.splits; ++s) mx = fmaxf(mx, w[s * (D + 2) + D]);
  float l = 0.0f;
  for (int s = 0; s < a.splits; ++s) {
    const float ms = w[s * (D + 2) + D];
    if (ms != -INFINITY) l += w[s * (D + 2) + D + 1] * expf(ms - mx);
  }
  T* orow = static_cast<T*>(a.out) + b * a.obs + h * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const float ms = w[s * (D + 2) + D];
      if (ms != -INFINITY) acc += w[s * (D + 2) + d] * expf(ms - mx);
    }
    orow[d] = from_float<T>(l > 0.0f ? acc / l : 0.0f);
  }
}

__global__ void beam_table_kernel(const int32_t* __restrict__ old_table, int32_t* __restrict__ new_table,
                                  const int32_t* __restrict__ parents, int64_t batch, int64_t stride,
                                  int64_t len) {
  const int64_t total = batch * (len + 1);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / (len + 1), j = e % (len + 1);
    new_table[b * stride + j] = j < len ? old_table[static_cast<int64_t>(parents[b]) * stride + j]
                                        : static_cast<int32_t>(b);
  }
}

// ---- host side ------------------------------------------------------------------

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Validates p (as the CPU op does) and fills in the default strides.
Args resolve(const AttentionCudaParams& p, const char* what) {
  PALI_CHECK_ARG(p.batch >= 0 && p.heads > 0 && p.q_len >= 0 && p.kv_len >= 0 && p.head_dim > 0, what,
                 ": bad sizes batch=", p.batch, " heads=", p.heads, " q_len=", p.q_len, " kv_len=", p.kv_len,
                 " head_dim=", p.head_dim);
  PALI_CHECK_ARG(p.batch <= 65535 && p.heads <= 65535, what, ": batch and heads must be <= 65535");
  PALI_CHECK_ARG(p.kv_batch_divisor >= 1 && (p.batch == 0 || p.batch % p.kv_batch_divisor == 0), what,
                 ": kv_batch_divisor ", p.kv_batch_divisor, " does not divide batch ", p.batch);
  PALI_CHECK_ARG(p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16, what,
                 ": dtype must be float32, float16 or bfloat16, got ", dtype_name(p.dtype));
  const int64_t hd = p.heads * p.head_dim;
  Args a{};
  a.batch = p.batch;
  a.heads = p.heads;
  a.q_len = p.q_len;
  a.kv_len = p.kv_len;
  a.scale = p.scale;
  a.q = p.q;
  a.qrs = p.q_row_stride ? p.q_row_stride : hd;
  a.qbs = p.q_batch_stride ? p.q_batch_stride : p.q_len * a.qrs;
  a.k = p.k;
  a.krs = p.k_row_stride ? p.k_row_stride : hd;
  a.kbs = p.k_batch_stride ? p.k_batch_stride : p.kv_len * a.krs;
  a.v = p.v;
  a.vrs = p.v_row_stride ? p.v_row_stride : hd;
  a.vbs = p.v_batch_stride ? p.v_batch_stride : p.kv_len * a.vrs;
  a.out = p.out;
  a.ors = p.out_row_stride ? p.out_row_stride : hd;
  a.obs = p.out_batch_stride ? p.out_batch_stride : p.q_len * a.ors;
  PALI_CHECK_ARG(a.qrs >= hd && a.krs >= hd && a.vrs >= hd && a.ors >= hd, what,
                 ": row strides must be >= heads*head_dim = ", hd);
  PALI_CHECK_ARG(p.batch == 0 || p.q_len == 0 || (p.q && p.out), what, ": null q or out");
  PALI_CHECK_ARG(p.kv_len == 0 || (p.k && p.v), what, ": null k or v");
  PALI_CHECK_ARG(p.key_mask == nullptr || p.mask_type != MaskType::none, what,
                 ": key_mask given without a mask_type");
  if (p.mask_type != MaskType::none) PALI_CHECK_ARG(p.key_mask != nullptr, what, ": mask_type set but key_mask is null");
  a.mask = p.key_mask;
  a.mask_type = p.mask_type == MaskType::none ? 0 : (p.mask_type == MaskType::i32 ? 1 : 2);
  a.mbs = p.mask_batch_stride ? p.mask_batch_stride : p.kv_len;
  a.causal = p.causal;
  PALI_CHECK_ARG(p.q_offset >= 0, what, ": q_offset must be >= 0");
  a.q_offset = p.q_offset;
  if (p.rel_bias && p.kv_len > 0 && p.q_len > 0) {
    const int64_t lo = -(p.q_offset + p.q_len - 1) + p.rel_offset;
    const int64_t hi = (p.kv_len - 1 - p.q_offset) + p.rel_offset;
    PALI_CHECK_ARG(lo >= 0 && hi < p.rel_bias_stride, what, ": the bias table [", p.heads, ", ",
                   p.rel_bias_stride, "] with rel_offset ", p.rel_offset,
                   " does not cover relative distances ", -(p.q_offset + p.q_len - 1), "..",
                   p.kv_len - 1 - p.q_offset);
  }
  a.rel = p.rel_bias;
  a.rel_stride = p.rel_bias_stride;
  a.rel_offset = p.rel_offset;
  a.div = p.kv_batch_divisor;
  a.kv_index = p.kv_index;
  a.kv_index_stride = p.kv_index_stride ? p.kv_index_stride : p.kv_len;
  if (p.kv_index) PALI_CHECK_ARG(a.kv_index_stride >= p.kv_len, what, ": kv_index_stride < kv_len");
  const size_t es = dtype_size(p.dtype);
  auto al = [es](int64_t stride) { return (static_cast<size_t>(stride) * es) % 16 == 0; };
  a.vec = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && al(a.qrs) && al(a.qbs) && al(a.krs) &&
          al(a.kbs) && al(a.vrs) && al(a.vbs) && (static_cast<size_t>(p.head_dim) * es) % 16 == 0;
  return a;
}

#define PALI_ATTENTION_HEAD_DIMS(hd, what, ...)                                           \
  switch (hd) {                                                                           \
    case 64: { constexpr int kD = 64; __VA_ARGS__; break; }                               \
    case 72: { constexpr int kD = 72; __VA_ARGS__; break; }                               \
    case 80: { constexpr int kD = 80; __VA_ARGS__; break; }                               \
    case 96: { constexpr int kD = 96; __VA_ARGS__; break; }                               \
    case 128: { constexpr int kD = 128; __VA_ARGS__; break; }                             \
    default:                                                                              \
      throw InvalidArgument(str_cat(what, ": head_dim ", hd,                              \
                                    " not supported (64, 72, 80, 96 or 128)"));           \
  }

struct DecodePlan {
  int splits;
  int64_t chunk;
  int64_t max_splits;
};

DecodePlan plan_decode(const AttentionCudaParams& p, bool with_device) {
  const int64_t kv_eff = p.causal ? std::min(p.kv_len, p.q_offset + 1) : p.kv_len;
  const int64_t tiles = std::max<int64_t>(1, div_up(std::max<int64_t>(kv_eff, 0), kDecBK));
  DecodePlan plan;
  plan.max_splits = std::min<int64_t>(tiles, kMaxSplits);
  int64_t splits = 1;
  if (with_device) {
    const int64_t target = 2 * int64_t(sm_count());
    const int64_t rows = std::max<int64_t>(1, p.batch * p.heads);
    splits = std::max<int64_t>(1, std::min<int64_t>(div_up(target, rows), plan.max_splits));
  }
  const int64_t chunk_tiles = div_up(tiles, splits);
  plan.splits = static_cast<int>(div_up(tiles, chunk_tiles));
  plan.chunk = chunk_tiles * kDecBK;
  return plan;
}

}  // namespace

void attention_cuda(const AttentionCudaParams& p, cudaStream_t stream) {
  Args a = resolve(p, "attention_cuda");
  if (p.batch == 0 || p.q_len == 0) return;
  const dim3 grid(static_cast<unsigned>(div_up(p.q_len, kBQ)), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  PALI_CHECK_ARG(div_up(p.q_len, kBQ) <= 0x7fffffff, "attention_cuda: q_len too large");
  PALI_CUDA_DISPATCH_FLOAT(p.dtype, "attention_cuda", {
    PALI_ATTENTION_HEAD_DIMS(p.head_dim, "attention_cuda", {
      const size_t smem = PrefillLayout<kD>::bytes;
      auto kernel = attention_prefill_kernel<scalar_t, kD>;
      allow_dynamic_smem(kernel, smem);
      kernel<<<grid, kThreads, smem, stream>>>(a);
    });
  });
  PALI_CUDA_CHECK_LAUNCH();
}

size_t attention_decode_workspace_bytes(const AttentionCudaParams& p) {
  PALI_CHECK_ARG(p.batch >= 0 && p.heads > 0 && p.kv_len >= 0 && p.head_dim > 0,
                 "attention_decode_cuda: bad sizes");
  const DecodePlan plan = plan_decode(p, false);
  return static_cast<size_t>(p.batch * p.heads * plan.max_splits * (p.head_dim + 2)) * sizeof(float);
}

void attention_decode_cuda(const AttentionCudaParams& p, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream) {
  PALI_CHECK_ARG(p.q_len == 1, "attention_decode_cuda: q_len must be 1, got ", p.q_len);
  Args a = resolve(p, "attention_decode_cuda");
  if (p.batch == 0) return;
  const DecodePlan plan = plan_decode(p, true);
  a.splits = plan.splits;
  a.chunk = plan.chunk;
  a.ws = static_cast<float*>(workspace);
  if (plan.splits > 1) {
    const size_t need = static_cast<size_t>(p.batch * p.heads * plan.splits * (p.head_dim + 2)) * sizeof(float);
    PALI_CHECK_ARG(workspace && workspace_bytes >= need, "attention_decode_cuda: workspace of ",
                   workspace_bytes, " bytes, needs ", need);
  }
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  PALI_CUDA_DISPATCH_FLOAT(p.dtype, "attention_decode_cuda", {
    PALI_ATTENTION_HEAD_DIMS(p.head_dim, "attention_decode_cuda", {
      const size_t smem = DecodeLayout<kD>::bytes;
      auto kernel = attention_decode_kernel<scalar_t, kD>;
      allow_dynamic_smem(kernel, smem);
      kernel<<<grid, kDecThreads, smem, stream>>>(a);
      PALI_CUDA_CHECK_LAUNCH();
      if (plan.splits > 1) {
        attention_decode_combine_kernel<scalar_t, kD>
            <<<dim3(static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), 128, 0, stream>>>(a);
        PALI_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

void beam_table_reorder_cuda(const int32_t* old_table, int32_t* new_table, const int32_t* parents,
                             int64_t batch, int64_t stride, int64_t len, cudaStream_t stream) {
  PALI_CHECK_ARG(batch >= 0 && len >= 0 && stride > len, "beam_table_reorder_cuda: bad sizes batch=", batch,
                 " stride=", stride, " len=", len);
  if (batch == 0) return;
  PALI_CHECK_ARG(new_table && parents && (len == 0 || old_table) && old_table != new_table,
                 "beam_table_reorder_cuda: null or aliased tables");
  const int64_t total = batch * (len + 1);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(div_up(total, 256), 4096));
  beam_table_kernel<<<blocks, 256, 0, stream>>>(old_table, new_table, parents, batch, stride, len);
  PALI_CUDA_CHECK_LAUNCH();
}

}  // namespace pali
