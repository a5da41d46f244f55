// CPU flash-style attention: per query row, keys in blocks of kKeyBlock with an
// online softmax (running max, running sum, rescaled accumulator), so only one
// block of scores exists at a time. Work items: batch x heads x query blocks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/attention.h"
#include "ops/simd_avx2.h"

namespace pali {
namespace {

constexpr int64_t kKeyBlock = 64;
constexpr int64_t kQueryBlock = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Four dot products <q, k_i> over d floats (tail lanes via masked loads).
inline void dot4(const float* q, const float* k0, const float* k1, const float* k2, const float* k3,
                 int64_t d, float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    const __m256 qv = _mm256_loadu_ps(q + c);
    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + c), a0);
    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + c), a1);
    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + c), a2);
    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + c), a3);
  }
  if (c < d) {
    const __m256i mk = simd::tail_mask(d - c);
    const __m256 qv = _mm256_maskload_ps(q + c, mk);
    a0 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + c, mk), a0);
    a1 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k1 + c, mk), a1);
    a2 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k2 + c, mk), a2);
    a3 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k3 + c, mk), a3);
  }
  // Transpose-and-add: lanes of s hold the four sums.
  const __m256 s01 = _mm256_hadd_ps(a0, a1);
  const __m256 s23 = _mm256_hadd_ps(a2, a3);
  const __m256 s = _mm256_hadd_ps(s01, s23);
  const __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  _mm_storeu_ps(out, r);
}

inline float dot1(const float* q, const float* k, int64_t d) {
  __m256 a = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a);
  if (c < d) {
    const __m256i mk = simd::tail_mask(d - c);
    a = _mm256_fmadd_ps(_mm256_maskload_ps(q + c, mk), _mm256_maskload_ps(k + c, mk), a);
  }
  return simd::hsum(a);
}

// acc[off, off + 8G) += sum_j p[j] * v_j[off, off + 8G) over nj keys (rows of V at vstride).
template <int G>
inline void pv_block(float* acc, const float* v, int64_t vstride, const float* p, int64_t nj,
                     int64_t off) {
  __m256 a[G];
  for (int g = 0; g < G; ++g) a[g] = _mm256_loadu_ps(acc + off + 8 * g);
  for (int64_t j = 0; j < nj; ++j) {
    const float pj = p[j];
    if (pj == 0.0f) continue;
    const __m256 pv = _mm256_set1_ps(pj);
    const float* vr = v + j * vstride + off;
    for (int g = 0; g < G; ++g) a[g] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * g), a[g]);
  }
  for (int g = 0; g < G; ++g) _mm256_storeu_ps(acc + off + 8 * g, a[g]);
}

inline void pv_tail(float* acc, const float* v, int64_t vstride, const float* p, int64_t nj,
                    int64_t off, int64_t count) {
  const __m256i mk = simd::tail_mask(count);
  __m256 a = _mm256_loadu_ps(acc + off);  // acc is padded to a multiple of 8
  for (int64_t j = 0; j < nj; ++j) {
    if (p[j] == 0.0f) continue;
    a = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_maskload_ps(v + j * vstride + off, mk), a);
  }
  _mm256_storeu_ps(acc + off, a);
}

inline void pv_all(float* acc, const float* v, int64_t vstride, const float* p, int64_t nj,
                   int64_t d) {
  int64_t off = 0;
  for (; off + 64 <= d; off += 64) pv_block<8>(acc, v, vstride, p, nj, off);
  for (; off + 32 <= d; off += 32) pv_block<4>(acc, v, vstride, p, nj, off);
  for (; off + 16 <= d; off += 16) pv_block<2>(acc, v, vstride, p, nj, off);
  for (; off + 8 <= d; off += 8) pv_block<1>(acc, v, vstride, p, nj, off);
  if (off < d) pv_tail(acc, v, vstride, p, nj, off, d - off);
}

inline bool mask_allows(const AttentionParams& p, const void* mask_row, int64_t j) {
  if (p.mask_type == MaskType::i32) return static_cast<const int32_t*>(mask_row)[j] != 0;
  return static_cast<const uint8_t*>(mask_row)[j] != 0;
}

}  // namespace

void attention(const AttentionParams& in) {
  AttentionParams p = in;
  PALI_CHECK_ARG(p.batch >= 0 && p.heads > 0 && p.q_len >= 0 && p.kv_len >= 0 && p.head_dim > 0,
                 "attention: bad sizes batch=", p.batch, " heads=", p.heads, " q_len=", p.q_len,
                 " kv_len=", p.kv_len, " head_dim=", p.head_dim);
  if (p.batch == 0 || p.q_len == 0) return;
  PALI_CHECK_ARG(p.kv_batch_divisor >= 1 && p.batch % p.kv_batch_divisor == 0,
                 "attention: kv_batch_divisor ", p.kv_batch_divisor, " does not divide batch ",
                 p.batch);
  const int64_t hd = p.heads * p.head_dim;
  if (p.q_row_stride == 0) p.q_row_stride = hd;
  if (p.k_row_stride == 0) p.k_row_stride = hd;
  if (p.v_row_stride == 0) p.v_row_stride = hd;
  if (p.out_row_stride == 0) p.out_row_stride = hd;
  if (p.q_batch_stride == 0) p.q_batch_stride = p.q_len * p.q_row_stride;
  if (p.k_batch_stride == 0) p.k_batch_stride = p.kv_len * p.k_row_stride;
  if (p.v_batch_stride == 0) p.v_batch_stride = p.kv_len * p.v_row_stride;
  if (p.out_batch_stride == 0) p.out_batch_stride = p.q_len * p.out_row_stride;
  if (p.mask_batch_stride == 0) p.mask_batch_stride = p.kv_len;
  PALI_CHECK_ARG(p.q_row_stride >= hd && p.k_row_stride >= hd && p.v_row_stride >= hd &&
                     p.out_row_stride >= hd,
                 "attention: row strides must be >= heads*head_dim = ", hd);
  PALI_CHECK_ARG(p.q && p.out, "attention: null q or out");
  PALI_CHECK_ARG(p.kv_len == 0 || (p.k && p.v), "attention: null k or v");
  PALI_CHECK_ARG(p.key_mask == nullptr || p.mask_type != MaskType::none,
                 "attention: key_mask given without a mask_type");
  if (p.mask_type != MaskType::none)
    PALI_CHECK_ARG(p.key_mask != nullptr, "attention: mask_type set but key_mask is null");
  PALI_CHECK_ARG(p.q_offset >= 0, "attention: q_offset must be >= 0");
  if (p.rel_bias && p.kv_len > 0) {
    const int64_t lo = -(p.q_offset + p.q_len - 1) + p.rel_offset;
    const int64_t hi = (p.kv_len - 1 - p.q_offset) + p.rel_offset;
    PALI_CHECK_ARG(lo >= 0 && hi < p.rel_bias_stride, "attention: the bias table [", p.heads, ", ",
                   p.rel_bias_stride, "] with rel_offset ", p.rel_offset,
                   " does not cover relative distances ", -(p.q_offset + p.q_len - 1), "..",
                   p.kv_len - 1 - p.q_offset);
  }

  const int64_t d = p.head_dim;
  const int64_t nqb = (p.q_len + kQueryBlock - 1) / kQueryBlock;
  const int64_t items = p.batch * p.heads * nqb;
  parallel_for(0, items, 1, [&](int64_t ib, int64_t ie) {
    const int64_t dpad = (d + 7) / 8 * 8;
    std::vector<float> acc(static_cast<size_t>(dpad));
    alignas(32) float s[kKeyBlock];
    for (int64_t item = ib; item < ie; ++item) {
      const int64_t b = item / (p.heads * nqb);
      const int64_t h = (item / nqb) % p.heads;
      const int64_t qb = item % nqb;
      const int64_t kvb = b / p.kv_batch_divisor;
      const float* kbase = p.k + kvb * p.k_batch_stride + h * d;
      const float* vbase = p.v + kvb * p.v_batch_stride + h * d;
      const void* mask_row = nullptr;
      if (p.key_mask) {
        const size_t es = p.mask_type == MaskType::i32 ? 4 : 1;
        mask_row = static_cast<const char*>(p.key_mask) + kvb * p.mask_batch_stride * es;
      }
      const int64_t i_end = std::min(p.q_len, (qb + 1) * kQueryBlock);
      for (int64_t i = qb * kQueryBlock; i < i_end; ++i) {
        const float* qi = p.q + b * p.q_batch_stride + i * p.q_row_stride + h * d;
        float* oi = p.out + b * p.out_batch_stride + i * p.out_row_stride + h * d;
        const int64_t pos = p.q_offset + i;
        const int64_t kv_end = p.causal ? std::min(p.kv_len, pos + 1) : p.kv_len;
        // Bias of key j: bias_row[j].
        const float* bias_row = p.rel_bias ? p.rel_bias + h * p.rel_bias_stride + p.rel_offset - pos : nullptr;
        std::fill(acc.begin(), acc.end(), 0.0f);
        float run_max = kNegInf, run_sum = 0.0f;
        for (int64_t kb = 0; kb < kv_end; kb += kKeyBlock) {
          const int64_t nj = std::min(kKeyBlock, kv_end - kb);
          const float* kr = kbase + kb * p.k_row_stride;
          int64_t j = 0;
          for (; j + 4 <= nj; j += 4)
            dot4(qi, kr + j * p.k_row_stride, kr + (j + 1) * p.k_row_stride,
                 kr + (j + 2) * p.k_row_stride, kr + (j + 3) * p.k_row_stride, d, s + j);
          for (; j < nj; ++j) s[j] = dot1(qi, kr + j * p.k_row_stride, d);
          float bmax = kNegInf;
          for (j = 0; j < nj; ++j) {
            float v = s[j] * p.scale;
            if (bias_row) v += bias_row[kb + j];
            if (mask_row && !mask_allows(p, mask_row, kb + j)) v = kNegInf;
            s[j] = v;
            bmax = std::max(bmax, v);
          }
          if (bmax == kNegInf) continue;  // every key of the block masked
          const float new_max = std::max(run_max, bmax);
          if (new_max > run_max && run_max != kNegInf) {
            const float corr = std::exp(run_max - new_max);
            run_sum *= corr;
            const __m256 cv = _mm256_set1_ps(corr);
            for (int64_t c = 0; c < dpad; c += 8)
              _mm256_storeu_ps(acc.data() + c, _mm256_mul_ps(_mm256_loadu_ps(acc.data() + c), cv));
          }
          run_max = new_max;
          const __m256 mv = _mm256_set1_ps(new_max);
          __m256 sum = _mm256_setzero_ps();
          j = 0;
          for (; j + 8 <= nj; j += 8) {
            const __m256 e = simd::exp(_mm256_sub_ps(_mm256_load_ps(s + j), mv));
            _mm256_store_ps(s + j, e);
            sum = _mm256_add_ps(sum, e);
          }
          float bsum = simd::hsum(sum);
          for (; j < nj; ++j) {
            s[j] = s[j] == kNegInf ? 0.0f : std::exp(s[j] - new_max);
            bsum += s[j];
          }
          run_sum += bsum;
          pv_all(acc.data(), vbase + kb * p.v_row_stride, p.v_row_stride, s, nj, d);
        }
        if (run_sum > 0.0f) {
          const float inv = 1.0f / run_sum;
          for (int64_t c = 0; c < d; ++c) oi[c] = acc[c] * inv;
        } else {
          for (int64_t c = 0; c < d; ++c) oi[c] = 0.0f;
        }
      }
    }
  });
}

}  // namespace pali
