// CPU flash-style attention: each query row goes through the keys in blocks of
// kKeyBlock with an online softmax (running max, running sum, rescaled
// accumulator), so only one block of scores per row exists at a time. Rows
// sharing K/V go four (then two, one) at a time, so every K/V vector loaded
// feeds several rows. Work items: K/V batch x heads x blocks of query rows.
// One driver runs every path: the AVX2 kernels on x86-64, the NEON and
// portable ones (one template, ops/simd_lanes.h) elsewhere or when chosen.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/simd_lanes.h"
#if defined(PALI_CPU_AVX2)
#include "ops/simd_avx2.h"
#endif

namespace pali {
namespace {

constexpr int64_t kKeyBlock = 128;
constexpr int64_t kQueryBlock = 16;
constexpr int64_t kMinChunkWork = 1 << 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct RowState {
  float max = kNegInf;
  float sum = 0.0f;
};

inline bool mask_allows(const AttentionParams& p, const void* mask_row, int64_t j) {
  if (p.mask_type == MaskType::i32) return static_cast<const int32_t*>(mask_row)[j] != 0;
  return static_cast<const uint8_t*>(mask_row)[j] != 0;
}

#if defined(PALI_CPU_AVX2)
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


// Loads each of these once: without it GCC folds the loads into both rows' FMAs
// and loads every K/V vector twice, which makes the loops load-bound.
inline void keep_in_register(__m256& a, __m256& b, __m256& c, __m256& d) {
  asm("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d));
}

// Two query rows x four keys: eight dot products (s0[0..4) for q0, s1[0..4) for q1).
inline void dot2x4(const float* q0, const float* q1, const float* k0, const float* k1,
                   const float* k2, const float* k3, int64_t d, float* s0, float* s1) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    const __m256 x = _mm256_loadu_ps(q0 + c), y = _mm256_loadu_ps(q1 + c);
    __m256 v0 = _mm256_loadu_ps(k0 + c), v1 = _mm256_loadu_ps(k1 + c);
    __m256 v2 = _mm256_loadu_ps(k2 + c), v3 = _mm256_loadu_ps(k3 + c);
    keep_in_register(v0, v1, v2, v3);
    a0 = _mm256_fmadd_ps(x, v0, a0);
    a1 = _mm256_fmadd_ps(x, v1, a1);
    a2 = _mm256_fmadd_ps(x, v2, a2);
    a3 = _mm256_fmadd_ps(x, v3, a3);
    b0 = _mm256_fmadd_ps(y, v0, b0);
    b1 = _mm256_fmadd_ps(y, v1, b1);
    b2 = _mm256_fmadd_ps(y, v2, b2);
    b3 = _mm256_fmadd_ps(y, v3, b3);
  }
  if (c < d) {
    const __m256i mk = simd::tail_mask(d - c);
    const __m256 x = _mm256_maskload_ps(q0 + c, mk), y = _mm256_maskload_ps(q1 + c, mk);
    const __m256 v0 = _mm256_maskload_ps(k0 + c, mk), v1 = _mm256_maskload_ps(k1 + c, mk);
    const __m256 v2 = _mm256_maskload_ps(k2 + c, mk), v3 = _mm256_maskload_ps(k3 + c, mk);
    a0 = _mm256_fmadd_ps(x, v0, a0);
    a1 = _mm256_fmadd_ps(x, v1, a1);
    a2 = _mm256_fmadd_ps(x, v2, a2);
    a3 = _mm256_fmadd_ps(x, v3, a3);
    b0 = _mm256_fmadd_ps(y, v0, b0);
    b1 = _mm256_fmadd_ps(y, v1, b1);
    b2 = _mm256_fmadd_ps(y, v2, b2);
    b3 = _mm256_fmadd_ps(y, v3, b3);
  }
  const __m256 sa = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 sb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
  _mm_storeu_ps(s0, _mm_add_ps(_mm256_castps256_ps128(sa), _mm256_extractf128_ps(sa, 1)));
  _mm_storeu_ps(s1, _mm_add_ps(_mm256_castps256_ps128(sb), _mm256_extractf128_ps(sb, 1)));
}

// Two query rows: acc0 += sum_j p0[j] v_j, acc1 += sum_j p1[j] v_j (acc padded to 8).
inline void pv2(float* acc0, float* acc1, const float* v, int64_t vstride, const float* p0,
                const float* p1, int64_t nj, int64_t d) {
  int64_t off = 0;
  for (; off + 32 <= d; off += 32) {
    __m256 a0 = _mm256_loadu_ps(acc0 + off), a1 = _mm256_loadu_ps(acc0 + off + 8);
    __m256 a2 = _mm256_loadu_ps(acc0 + off + 16), a3 = _mm256_loadu_ps(acc0 + off + 24);
    __m256 b0 = _mm256_loadu_ps(acc1 + off), b1 = _mm256_loadu_ps(acc1 + off + 8);
    __m256 b2 = _mm256_loadu_ps(acc1 + off + 16), b3 = _mm256_loadu_ps(acc1 + off + 24);
    for (int64_t j = 0; j < nj; ++j) {
      const __m256 x = _mm256_set1_ps(p0[j]), y = _mm256_set1_ps(p1[j]);
      const float* vr = v + j * vstride + off;
      __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
      __m256 v2 = _mm256_loadu_ps(vr + 16), v3 = _mm256_loadu_ps(vr + 24);
      keep_in_register(v0, v1, v2, v3);
      a0 = _mm256_fmadd_ps(x, v0, a0);
      a1 = _mm256_fmadd_ps(x, v1, a1);
      a2 = _mm256_fmadd_ps(x, v2, a2);
      a3 = _mm256_fmadd_ps(x, v3, a3);
      b0 = _mm256_fmadd_ps(y, v0, b0);
      b1 = _mm256_fmadd_ps(y, v1, b1);
      b2 = _mm256_fmadd_ps(y, v2, b2);
      b3 = _mm256_fmadd_ps(y, v3, b3);
    }
    _mm256_storeu_ps(acc0 + off, a0);
    _mm256_storeu_ps(acc0 + off + 8, a1);
    _mm256_storeu_ps(acc0 + off + 16, a2);
    _mm256_storeu_ps(acc0 + off + 24, a3);
    _mm256_storeu_ps(acc1 + off, b0);
    _mm256_storeu_ps(acc1 + off + 8, b1);
    _mm256_storeu_ps(acc1 + off + 16, b2);
    _mm256_storeu_ps(acc1 + off + 24, b3);
  }
  for (; off < d; off += 8) {
    const int64_t count = std::min<int64_t>(8, d - off);
    const __m256i mk = simd::tail_mask(count);
    __m256 a = _mm256_loadu_ps(acc0 + off), b = _mm256_loadu_ps(acc1 + off);
    for (int64_t j = 0; j < nj; ++j) {
      const __m256 vv = _mm256_maskload_ps(v + j * vstride + off, mk);
      a = _mm256_fmadd_ps(_mm256_set1_ps(p0[j]), vv, a);
      b = _mm256_fmadd_ps(_mm256_set1_ps(p1[j]), vv, b);
    }
    _mm256_storeu_ps(acc0 + off, a);
    _mm256_storeu_ps(acc1 + off, b);
  }
}


// Four query rows x two keys: s_r[0..2) for row r.
inline void dot4x2(const float* const q[4], const float* k0, const float* k1, int64_t d,
                   float* const s[4]) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
  __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  const float* q0 = q[0];
  const float* q1 = q[1];
  const float* q2 = q[2];
  const float* q3 = q[3];
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    __m256 v0 = _mm256_loadu_ps(k0 + c), v1 = _mm256_loadu_ps(k1 + c);
    __m256 x0 = _mm256_loadu_ps(q0 + c), x1 = _mm256_loadu_ps(q1 + c);
    __m256 x2 = _mm256_loadu_ps(q2 + c), x3 = _mm256_loadu_ps(q3 + c);
    keep_in_register(v0, v1, x0, x1);
    a00 = _mm256_fmadd_ps(x0, v0, a00);
    a01 = _mm256_fmadd_ps(x0, v1, a01);
    a10 = _mm256_fmadd_ps(x1, v0, a10);
    a11 = _mm256_fmadd_ps(x1, v1, a11);
    a20 = _mm256_fmadd_ps(x2, v0, a20);
    a21 = _mm256_fmadd_ps(x2, v1, a21);
    a30 = _mm256_fmadd_ps(x3, v0, a30);
    a31 = _mm256_fmadd_ps(x3, v1, a31);
  }
  if (c < d) {
    const __m256i mk = simd::tail_mask(d - c);
    const __m256 v0 = _mm256_maskload_ps(k0 + c, mk), v1 = _mm256_maskload_ps(k1 + c, mk);
    const __m256 x0 = _mm256_maskload_ps(q0 + c, mk), x1 = _mm256_maskload_ps(q1 + c, mk);
    const __m256 x2 = _mm256_maskload_ps(q2 + c, mk), x3 = _mm256_maskload_ps(q3 + c, mk);
    a00 = _mm256_fmadd_ps(x0, v0, a00);
    a01 = _mm256_fmadd_ps(x0, v1, a01);
    a10 = _mm256_fmadd_ps(x1, v0, a10);
    a11 = _mm256_fmadd_ps(x1, v1, a11);
    a20 = _mm256_fmadd_ps(x2, v0, a20);
    a21 = _mm256_fmadd_ps(x2, v1, a21);
    a30 = _mm256_fmadd_ps(x3, v0, a30);
    a31 = _mm256_fmadd_ps(x3, v1, a31);
  }
  // Lanes of u: r0k0 r0k1 r1k0 r1k1 (low half + high half), then rows 2, 3.
  const __m256 u01 = _mm256_hadd_ps(_mm256_hadd_ps(a00, a01), _mm256_hadd_ps(a10, a11));
  const __m256 u23 = _mm256_hadd_ps(_mm256_hadd_ps(a20, a21), _mm256_hadd_ps(a30, a31));
  alignas(16) float t[8];
  _mm_store_ps(t, _mm_add_ps(_mm256_castps256_ps128(u01), _mm256_extractf128_ps(u01, 1)));
  _mm_store_ps(t + 4, _mm_add_ps(_mm256_castps256_ps128(u23), _mm256_extractf128_ps(u23, 1)));
  s[0][0] = t[0];
  s[0][1] = t[1];
  s[1][0] = t[2];
  s[1][1] = t[3];
  s[2][0] = t[4];
  s[2][1] = t[5];
  s[3][0] = t[6];
  s[3][1] = t[7];
}

// Four query rows: acc_r += sum_j p_r[j] v_j (acc rows padded to 8).
inline void pv4(float* const acc[4], const float* v, int64_t vstride, const float* const pr[4],
                int64_t nj, int64_t d) {
  int64_t off = 0;
  for (; off + 16 <= d; off += 16) {
    __m256 a00 = _mm256_loadu_ps(acc[0] + off), a01 = _mm256_loadu_ps(acc[0] + off + 8);
    __m256 a10 = _mm256_loadu_ps(acc[1] + off), a11 = _mm256_loadu_ps(acc[1] + off + 8);
    __m256 a20 = _mm256_loadu_ps(acc[2] + off), a21 = _mm256_loadu_ps(acc[2] + off + 8);
    __m256 a30 = _mm256_loadu_ps(acc[3] + off), a31 = _mm256_loadu_ps(acc[3] + off + 8);
    const float* p0 = pr[0];
    const float* p1 = pr[1];
    const float* p2 = pr[2];
    const float* p3 = pr[3];
    for (int64_t j = 0; j < nj; ++j) {
      const float* vr = v + j * vstride + off;
      __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
      __m256 x0 = _mm256_set1_ps(p0[j]), x1 = _mm256_set1_ps(p1[j]);
      keep_in_register(v0, v1, x0, x1);
      a00 = _mm256_fmadd_ps(x0, v0, a00);
      a01 = _mm256_fmadd_ps(x0, v1, a01);
      a10 = _mm256_fmadd_ps(x1, v0, a10);
      a11 = _mm256_fmadd_ps(x1, v1, a11);
      const __m256 x2 = _mm256_set1_ps(p2[j]), x3 = _mm256_set1_ps(p3[j]);
      a20 = _mm256_fmadd_ps(x2, v0, a20);
      a21 = _mm256_fmadd_ps(x2, v1, a21);
      a30 = _mm256_fmadd_ps(x3, v0, a30);
      a31 = _mm256_fmadd_ps(x3, v1, a31);
    }
    _mm256_storeu_ps(acc[0] + off, a00);
    _mm256_storeu_ps(acc[0] + off + 8, a01);
    _mm256_storeu_ps(acc[1] + off, a10);
    _mm256_storeu_ps(acc[1] + off + 8, a11);
    _mm256_storeu_ps(acc[2] + off, a20);
    _mm256_storeu_ps(acc[2] + off + 8, a21);
    _mm256_storeu_ps(acc[3] + off, a30);
    _mm256_storeu_ps(acc[3] + off + 8, a31);
  }
  for (; off < d; off += 8) {
    const int64_t count = std::min<int64_t>(8, d - off);
    const __m256i mk = simd::tail_mask(count);
    for (int r = 0; r < 4; ++r) {
      __m256 a = _mm256_loadu_ps(acc[r] + off);
      for (int64_t j = 0; j < nj; ++j)
        a = _mm256_fmadd_ps(_mm256_set1_ps(pr[r][j]), _mm256_maskload_ps(v + j * vstride + off, mk), a);
      _mm256_storeu_ps(acc[r] + off, a);
    }
  }
}

// Turns the raw dot products s[0, nj) of keys [kb, kb + nj) into softmax weights
// relative to the row's running max (0 for masked keys and keys >= kv_end),
// rescaling the row's accumulator and sum when the max grows. Returns false
// (s all zero) when every key of the block is masked.
inline bool softmax_block(const AttentionParams& p, float* s, int64_t nj, int64_t kb, int64_t kv_begin,
                          int64_t kv_end, const float* bias_row, const void* mask_row, RowState& st, float* acc,
                          int64_t dpad) {
  // Scale and bias, vectorised; masking only where a mask or the causal end applies.
  const __m256 sc = _mm256_set1_ps(p.scale);
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + j), sc);
    if (bias_row) v = _mm256_add_ps(v, _mm256_loadu_ps(bias_row + kb + j));
    _mm256_storeu_ps(s + j, v);
  }
  for (; j < nj; ++j) s[j] = bias_row ? s[j] * p.scale + bias_row[kb + j] : s[j] * p.scale;
  if (p.softcap > 0.0f) softcap_row(s, nj, p.softcap);
  for (j = 0; j < std::min(nj, kv_begin - kb); ++j) s[j] = kNegInf;
  if (mask_row) {
    for (j = 0; j < nj; ++j)
      if (!mask_allows(p, mask_row, kb + j)) s[j] = kNegInf;
  }
  for (j = std::max<int64_t>(0, kv_end - kb); j < nj; ++j) s[j] = kNegInf;
  __m256 mx = _mm256_set1_ps(kNegInf);
  for (j = 0; j + 8 <= nj; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
  float bmax = simd::hmax(mx);
  for (; j < nj; ++j) bmax = std::max(bmax, s[j]);
  if (bmax == kNegInf) {
    for (int64_t j = 0; j < nj; ++j) s[j] = 0.0f;
    return false;
  }
  const float new_max = std::max(st.max, bmax);
  if (new_max > st.max && st.max != kNegInf) {
    const float corr = std::exp(st.max - new_max);
    st.sum *= corr;
    const __m256 cv = _mm256_set1_ps(corr);
    for (int64_t c = 0; c < dpad; c += 8)
      _mm256_storeu_ps(acc + c, _mm256_mul_ps(_mm256_loadu_ps(acc + c), cv));
  }
  st.max = new_max;
  const __m256 mv = _mm256_set1_ps(new_max);
  __m256 sum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= nj; j += 8) {
    const __m256 e = simd::exp(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float bsum = simd::hsum(sum);
  for (; j < nj; ++j) {
    s[j] = s[j] == kNegInf ? 0.0f : std::exp(s[j] - new_max);
    bsum += s[j];
  }
  st.sum += bsum;
  return true;
}

// The AVX2 kernels as the driver calls them.
struct Avx2Attention {
#define PALI_FORWARD(name) \
  template <typename... A> \
  static inline __attribute__((always_inline)) auto name(A&&... a) { return ::pali::name(std::forward<A>(a)...); }
  PALI_FORWARD(dot1)
  PALI_FORWARD(dot4)
  PALI_FORWARD(dot2x4)
  PALI_FORWARD(dot4x2)
  PALI_FORWARD(pv_all)
  PALI_FORWARD(pv2)
  PALI_FORWARD(pv4)
  PALI_FORWARD(softmax_block)
#undef PALI_FORWARD
};
#endif

// The portable and NEON kernels: the AVX2 kernels' arithmetic on L's vectors,
// the rows' K/V loads shared the same way, tails in scalar code.
template <typename L>
struct LaneAttention {
  using V = typename L::V;
  static constexpr int W = L::kWidth;

  static float dot1(const float* q, const float* k, int64_t d) {
    V a = L::zero();
    int64_t c = 0;
    for (; c + W <= d; c += W) a = L::fma(L::load(q + c), L::load(k + c), a);
    float s = L::hsum(a);
    for (; c < d; ++c) s += q[c] * k[c];
    return s;
  }

  static void dot4(const float* q, const float* k0, const float* k1, const float* k2, const float* k3, int64_t d,
                   float* out) {
    V a0 = L::zero(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c + W <= d; c += W) {
      const V qv = L::load(q + c);
      a0 = L::fma(qv, L::load(k0 + c), a0);
      a1 = L::fma(qv, L::load(k1 + c), a1);
      a2 = L::fma(qv, L::load(k2 + c), a2);
      a3 = L::fma(qv, L::load(k3 + c), a3);
    }
    float s0 = L::hsum(a0), s1 = L::hsum(a1), s2 = L::hsum(a2), s3 = L::hsum(a3);
    for (; c < d; ++c) {
      s0 += q[c] * k0[c];
      s1 += q[c] * k1[c];
      s2 += q[c] * k2[c];
      s3 += q[c] * k3[c];
    }
    out[0] = s0;
    out[1] = s1;
    out[2] = s2;
    out[3] = s3;
  }

  static void dot2x4(const float* q0, const float* q1, const float* k0, const float* k1, const float* k2,
                     const float* k3, int64_t d, float* s0, float* s1) {
    dot4(q0, k0, k1, k2, k3, d, s0);
    dot4(q1, k0, k1, k2, k3, d, s1);
  }

  static void dot4x2(const float* const q[4], const float* k0, const float* k1, int64_t d, float* const s[4]) {
    for (int r = 0; r < 4; ++r) {
      V a0 = L::zero(), a1 = a0;
      int64_t c = 0;
      for (; c + W <= d; c += W) {
        const V qv = L::load(q[r] + c);
        a0 = L::fma(qv, L::load(k0 + c), a0);
        a1 = L::fma(qv, L::load(k1 + c), a1);
      }
      float t0 = L::hsum(a0), t1 = L::hsum(a1);
      for (; c < d; ++c) {
        t0 += q[r][c] * k0[c];
        t1 += q[r][c] * k1[c];
      }
      s[r][0] = t0;
      s[r][1] = t1;
    }
  }

  // acc_r += sum_j p_r[j] v_j for R rows: blocks of 4 vectors held across the
  // keys, then single vectors, then the scalar tail.
  template <int R>
  static void pv_rows(float* const acc[R], const float* v, int64_t vstride, const float* const pr[R], int64_t nj,
                      int64_t d) {
    int64_t off = 0;
    for (; off + 4 * W <= d; off += 4 * W) {
      V a[R][4];
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < 4; ++g) a[r][g] = L::load(acc[r] + off + g * W);
      for (int64_t j = 0; j < nj; ++j) {
        const float* vr = v + j * vstride + off;
        const V v0 = L::load(vr), v1 = L::load(vr + W), v2 = L::load(vr + 2 * W), v3 = L::load(vr + 3 * W);
        for (int r = 0; r < R; ++r) {
          const V x = L::set1(pr[r][j]);
          a[r][0] = L::fma(x, v0, a[r][0]);
          a[r][1] = L::fma(x, v1, a[r][1]);
          a[r][2] = L::fma(x, v2, a[r][2]);
          a[r][3] = L::fma(x, v3, a[r][3]);
        }
      }
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < 4; ++g) L::store(acc[r] + off + g * W, a[r][g]);
    }
    for (; off + W <= d; off += W) {
      V a[R];
      for (int r = 0; r < R; ++r) a[r] = L::load(acc[r] + off);
      for (int64_t j = 0; j < nj; ++j) {
        const V vv = L::load(v + j * vstride + off);
        for (int r = 0; r < R; ++r) a[r] = L::fma(L::set1(pr[r][j]), vv, a[r]);
      }
      for (int r = 0; r < R; ++r) L::store(acc[r] + off, a[r]);
    }
    for (; off < d; ++off)
      for (int64_t j = 0; j < nj; ++j)
        for (int r = 0; r < R; ++r) acc[r][off] += pr[r][j] * v[j * vstride + off];
  }

  static void pv_all(float* acc, const float* v, int64_t vstride, const float* p, int64_t nj, int64_t d) {
    float* const accs[1] = {acc};
    const float* const ps[1] = {p};
    pv_rows<1>(accs, v, vstride, ps, nj, d);
  }
  static void pv2(float* acc0, float* acc1, const float* v, int64_t vstride, const float* p0, const float* p1,
                  int64_t nj, int64_t d) {
    float* const accs[2] = {acc0, acc1};
    const float* const ps[2] = {p0, p1};
    pv_rows<2>(accs, v, vstride, ps, nj, d);
  }
  static void pv4(float* const acc[4], const float* v, int64_t vstride, const float* const pr[4], int64_t nj,
                  int64_t d) {
    pv_rows<4>(acc, v, vstride, pr, nj, d);
  }

  // As the AVX2 softmax_block.
  static bool softmax_block(const AttentionParams& p, float* s, int64_t nj, int64_t kb, int64_t kv_begin,
                            int64_t kv_end, const float* bias_row, const void* mask_row, RowState& st, float* acc,
                            int64_t dpad) {
    for (int64_t j = 0; j < nj; ++j) s[j] = bias_row ? s[j] * p.scale + bias_row[kb + j] : s[j] * p.scale;
    if (p.softcap > 0.0f) softcap_row(s, nj, p.softcap);
    for (int64_t j = 0; j < std::min(nj, kv_begin - kb); ++j) s[j] = kNegInf;
    if (mask_row) {
      for (int64_t j = 0; j < nj; ++j)
        if (!mask_allows(p, mask_row, kb + j)) s[j] = kNegInf;
    }
    for (int64_t j = std::max<int64_t>(0, kv_end - kb); j < nj; ++j) s[j] = kNegInf;
    V mx = L::set1(kNegInf);
    int64_t j = 0;
    for (; j + W <= nj; j += W) mx = L::max(mx, L::load(s + j));
    float bmax = L::hmax(mx);
    for (; j < nj; ++j) bmax = std::max(bmax, s[j]);
    if (bmax == kNegInf) {
      for (j = 0; j < nj; ++j) s[j] = 0.0f;
      return false;
    }
    const float new_max = std::max(st.max, bmax);
    if (new_max > st.max && st.max != kNegInf) {
      const float corr = std::exp(st.max - new_max);
      st.sum *= corr;
      for (int64_t c = 0; c < dpad; ++c) acc[c] *= corr;
    }
    st.max = new_max;
    const V mv = L::set1(new_max);
    V sum = L::zero();
    for (j = 0; j + W <= nj; j += W) {
      const V e = L::exp(L::sub(L::load(s + j), mv));
      L::store(s + j, e);
      sum = L::add(sum, e);
    }
    float bsum = L::hsum(sum);
    for (; j < nj; ++j) {
      s[j] = s[j] == kNegInf ? 0.0f : std::exp(s[j] - new_max);
      bsum += s[j];
    }
    st.sum += bsum;
    return true;
  }
};


inline void finish_row(const float* acc, const RowState& st, int64_t d, float* out, float* lse) {
  if (lse) *lse = st.sum > 0.0f ? st.max + std::log(st.sum) : kNegInf;
  if (st.sum > 0.0f) {
    const float inv = 1.0f / st.sum;
    for (int64_t c = 0; c < d; ++c) out[c] = acc[c] * inv;
  } else {
    for (int64_t c = 0; c < d; ++c) out[c] = 0.0f;
  }
}

// The query batches grouped by the K/V batch they read, each group in the order
// of b: group g reads K/V batch kv[g] and holds the query batches
// members[begin[g], begin[g + 1]). K/V batches no query batch reads have no group.
struct KvGroups {
  std::vector<int64_t> kv, begin, members;
  int64_t size() const { return static_cast<int64_t>(kv.size()); }
  int64_t members_of(int64_t g) const { return begin[g + 1] - begin[g]; }
};

KvGroups group_by_kv_batch(const AttentionParams& p) {
  KvGroups groups;
  groups.members.resize(p.batch);
  if (!p.kv_batch_index) {
    const int64_t div = p.kv_batch_divisor, kv_batches = p.batch / div;
    for (int64_t b = 0; b < p.batch; ++b) groups.members[b] = b;
    for (int64_t kvb = 0; kvb <= kv_batches; ++kvb) {
      if (kvb < kv_batches) groups.kv.push_back(kvb);
      groups.begin.push_back(kvb * div);
    }
    return groups;
  }
  // A counting sort by K/V batch, stable in b.
  std::vector<int64_t> count(p.kv_batches + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) ++count[p.kv_batch_index[b] + 1];
  for (int64_t kvb = 0; kvb < p.kv_batches; ++kvb) {
    if (count[kvb + 1] > 0) {
      groups.kv.push_back(kvb);
      groups.begin.push_back(count[kvb]);
    }
    count[kvb + 1] += count[kvb];
  }
  groups.begin.push_back(p.batch);
  for (int64_t b = 0; b < p.batch; ++b) groups.members[count[p.kv_batch_index[b]]++] = b;
  return groups;
}

// Everything after the checks, with the kernels K (p's strides filled in).
template <typename K>
void run_attention(const AttentionParams& p) {
  const int64_t group = p.heads / p.kv_heads;
  const int64_t d = p.head_dim;
  // Work items: (K/V batch, head, block of query rows). The query rows of one
  // K/V batch are those of the query batches reading it (beams sharing a
  // request's K/V), numbered r = member * q_len + i; rows go through the keys
  // four (then two, then one) at a time, so each K/V load feeds several rows.
  const KvGroups groups = group_by_kv_batch(p);
  const int64_t num_groups = groups.size();
  // Per group: its first work item and its first query row (both cumulative), and its blocks of rows.
  std::vector<int64_t> item_begin(num_groups + 1, 0), row_begin(num_groups + 1, 0), blocks(num_groups);
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t rows = groups.members_of(g) * p.q_len;
    blocks[g] = (rows + kQueryBlock - 1) / kQueryBlock;
    item_begin[g + 1] = item_begin[g] + p.heads * blocks[g];
    row_begin[g + 1] = row_begin[g] + rows;
  }
  const int64_t items = item_begin[num_groups];
  // Each group's mask row, or null where it hides no key: those skip the
  // per-key mask test (a decode step would otherwise test every key once per head).
  std::vector<const void*> mask_rows(p.key_mask ? num_groups : 0, nullptr);
  for (int64_t g = 0; g < static_cast<int64_t>(mask_rows.size()); ++g) {
    const size_t es = p.mask_type == MaskType::i32 ? 4 : 1;
    const void* row = static_cast<const char*>(p.key_mask) + groups.kv[g] * p.mask_batch_stride * es;
    for (int64_t j = 0; j < p.kv_len && !mask_rows[g]; ++j)
      if (!mask_allows(p, row, j)) mask_rows[g] = row;
  }
  // The first work item whose rows start at or after `target` of the rows of all
  // heads, counted item by item: chunks cut there hold about equal numbers of
  // rows, also when groups differ in size.
  const int64_t all_rows = row_begin[num_groups] * p.heads;
  const auto first_item_from = [&](int64_t target) -> int64_t {
    if (target >= all_rows) return items;
    int64_t g = 0;
    while (g + 1 < num_groups && row_begin[g + 1] * p.heads <= target) ++g;
    const int64_t rows = row_begin[g + 1] - row_begin[g], local = target - row_begin[g] * p.heads;
    const int64_t h = local / rows, block = (local % rows + kQueryBlock - 1) / kQueryBlock;
    return item_begin[g] + h * blocks[g] + block;
  };
  // Chunks of at least kMinChunkWork multiply-adds: a decode step's few query
  // rows run on the calling thread.
  const int64_t work = std::max<int64_t>(1, all_rows * std::max<int64_t>(p.kv_len, 1) * d);
  const int64_t chunks = std::min(items, (work + kMinChunkWork - 1) / kMinChunkWork);
  parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    const int64_t ib = first_item_from(all_rows * cb / chunks), ie = first_item_from(all_rows * ce / chunks);
    const int64_t dpad = (d + 7) / 8 * 8;
    std::vector<float> acc_buf(static_cast<size_t>(4 * dpad));
    float* acc0 = acc_buf.data();
    float* acc1 = acc0 + dpad;
    float* acc2 = acc1 + dpad;
    float* acc3 = acc2 + dpad;
    alignas(32) float s0[kKeyBlock];
    alignas(32) float s1[kKeyBlock];
    alignas(32) float s2[kKeyBlock];
    alignas(32) float s3[kKeyBlock];
    int64_t g = 0;
    for (int64_t item = ib; item < ie; ++item) {
      while (item >= item_begin[g + 1]) ++g;
      const int64_t kvb = groups.kv[g];
      const int64_t h = (item - item_begin[g]) / blocks[g];
      const int64_t rb = (item - item_begin[g]) % blocks[g];
      const int64_t* members = groups.members.data() + groups.begin[g];
      const int64_t rows_per_kv = groups.members_of(g) * p.q_len;
      const float* kbase = p.k + kvb * p.k_batch_stride + (h / group) * d;
      const float* vbase = p.v + kvb * p.v_batch_stride + (h / group) * d;
      const int64_t prefix = p.prefix_lengths ? std::min(p.prefix_lengths[kvb], p.kv_len) : 0;
      const int64_t ks = p.k_row_stride;
      const void* mask_row = p.key_mask ? mask_rows[g] : nullptr;
      struct Row {
        const float* q;
        float* out;
        int64_t kv_begin, kv_end;  // the keys outside [kv_begin, kv_end) are masked
        const float* bias;
        float* lse;
      };
      const auto row = [&](int64_t r) {
        const int64_t b = members[r / p.q_len], i = r % p.q_len;
        const int64_t pos = p.q_offset + i;
        Row w;
        w.q = p.q + b * p.q_batch_stride + i * p.q_row_stride + h * d;
        w.out = p.out + b * p.out_batch_stride + i * p.out_row_stride + h * d;
        w.lse = p.lse ? p.lse + (b * p.q_len + i) * p.heads + h : nullptr;
        w.kv_begin = 0;
        w.kv_end = p.kv_len;
        if (p.causal && pos < prefix) {
          w.kv_end = prefix;
        } else if (p.causal) {
          w.kv_end = std::min(p.kv_len, pos + 1);
          if (p.sliding_window > 0) w.kv_begin = std::max<int64_t>(0, pos - p.sliding_window + 1);
        }
        w.bias = p.rel_bias ? p.rel_bias + h * p.rel_bias_stride + p.rel_offset - pos : nullptr;
        return w;
      };
      const int64_t r_end = std::min(rows_per_kv, (rb + 1) * kQueryBlock);
      int64_t r = rb * kQueryBlock;
      // Four rows at a time (prefill): each K/V row read from L2 feeds four rows.
      for (; r + 4 <= r_end; r += 4) {
        const Row w[4] = {row(r), row(r + 1), row(r + 2), row(r + 3)};
        const float* qs[4] = {w[0].q, w[1].q, w[2].q, w[3].q};
        float* ss[4] = {s0, s1, s2, s3};
        float* accs[4] = {acc0, acc1, acc2, acc3};
        const int64_t end = std::max(std::max(w[0].kv_end, w[1].kv_end), std::max(w[2].kv_end, w[3].kv_end));
        const int64_t begin =
            std::min(std::min(w[0].kv_begin, w[1].kv_begin), std::min(w[2].kv_begin, w[3].kv_begin));
        std::fill(acc_buf.begin(), acc_buf.end(), 0.0f);
        RowState st[4];
        for (int64_t kb = begin; kb < end; kb += kKeyBlock) {
          const int64_t nj = std::min(kKeyBlock, end - kb);
          const float* kr = kbase + kb * ks;
          int64_t j = 0;
          for (; j + 2 <= nj; j += 2) {
            float* sj[4] = {s0 + j, s1 + j, s2 + j, s3 + j};
            K::dot4x2(qs, kr + j * ks, kr + (j + 1) * ks, d, sj);
          }
          for (; j < nj; ++j)
            for (int q = 0; q < 4; ++q) ss[q][j] = K::dot1(qs[q], kr + j * ks, d);
          bool any = false;
          for (int q = 0; q < 4; ++q)
            any |= K::softmax_block(p, ss[q], nj, kb, w[q].kv_begin, w[q].kv_end, w[q].bias, mask_row, st[q],
                                 accs[q], dpad);
          if (any) K::pv4(accs, vbase + kb * p.v_row_stride, p.v_row_stride, ss, nj, d);
        }
        for (int q = 0; q < 4; ++q) finish_row(accs[q], st[q], d, w[q].out, w[q].lse);
      }
      for (; r + 2 <= r_end; r += 2) {
        const Row w0 = row(r), w1 = row(r + 1);
        const int64_t end = std::max(w0.kv_end, w1.kv_end);
        const int64_t begin = std::min(w0.kv_begin, w1.kv_begin);
        std::fill(acc_buf.begin(), acc_buf.end(), 0.0f);
        RowState st0, st1;
        for (int64_t kb = begin; kb < end; kb += kKeyBlock) {
          const int64_t nj = std::min(kKeyBlock, end - kb);
          const float* kr = kbase + kb * ks;
          int64_t j = 0;
          for (; j + 4 <= nj; j += 4)
            K::dot2x4(w0.q, w1.q, kr + j * ks, kr + (j + 1) * ks, kr + (j + 2) * ks, kr + (j + 3) * ks, d,
                   s0 + j, s1 + j);
          for (; j < nj; ++j) {
            s0[j] = K::dot1(w0.q, kr + j * ks, d);
            s1[j] = K::dot1(w1.q, kr + j * ks, d);
          }
          const bool u0 = K::softmax_block(p, s0, nj, kb, w0.kv_begin, w0.kv_end, w0.bias, mask_row, st0, acc0, dpad);
          const bool u1 = K::softmax_block(p, s1, nj, kb, w1.kv_begin, w1.kv_end, w1.bias, mask_row, st1, acc1, dpad);
          if (u0 || u1) K::pv2(acc0, acc1, vbase + kb * p.v_row_stride, p.v_row_stride, s0, s1, nj, d);
        }
        finish_row(acc0, st0, d, w0.out, w0.lse);
        finish_row(acc1, st1, d, w1.out, w1.lse);
      }
      if (r < r_end) {
        const Row w0 = row(r);
        std::fill(acc0, acc0 + dpad, 0.0f);
        RowState st;
        for (int64_t kb = w0.kv_begin; kb < w0.kv_end; kb += kKeyBlock) {
          const int64_t nj = std::min(kKeyBlock, w0.kv_end - kb);
          const float* kr = kbase + kb * ks;
          int64_t j = 0;
          for (; j + 4 <= nj; j += 4)
            K::dot4(w0.q, kr + j * ks, kr + (j + 1) * ks, kr + (j + 2) * ks, kr + (j + 3) * ks, d, s0 + j);
          for (; j < nj; ++j) s0[j] = K::dot1(w0.q, kr + j * ks, d);
          if (K::softmax_block(p, s0, nj, kb, w0.kv_begin, w0.kv_end, w0.bias, mask_row, st, acc0, dpad))
            K::pv_all(acc0, vbase + kb * p.v_row_stride, p.v_row_stride, s0, nj, d);
        }
        finish_row(acc0, st, d, w0.out, w0.lse);
      }
    }
  });
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
  if (p.kv_batch_index) {
    PALI_CHECK_ARG(p.kv_batch_divisor == 1, "attention: kv_batch_index is given with kv_batch_divisor ",
                   p.kv_batch_divisor, " (one or the other)");
    PALI_CHECK_ARG(p.kv_batches > 0, "attention: kv_batch_index needs kv_batches > 0, got ", p.kv_batches);
    for (int64_t b = 0; b < p.batch; ++b)
      PALI_CHECK_ARG(p.kv_batch_index[b] >= 0 && p.kv_batch_index[b] < p.kv_batches, "attention: kv_batch_index[",
                     b, "] = ", p.kv_batch_index[b], " is outside the ", p.kv_batches, " K/V batches");
  }
  if (p.kv_heads == 0) p.kv_heads = p.heads;
  PALI_CHECK_ARG(p.kv_heads > 0 && p.heads % p.kv_heads == 0, "attention: kv_heads ", p.kv_heads,
                 " does not divide heads ", p.heads);
  PALI_CHECK_ARG(std::isfinite(p.softcap) && p.softcap >= 0, "attention: softcap must be >= 0");
  PALI_CHECK_ARG(p.sliding_window >= 0, "attention: sliding_window must be >= 0");
  PALI_CHECK_ARG(p.causal || (!p.prefix_lengths && p.sliding_window == 0),
                 "attention: prefix_lengths and sliding_window apply to causal attention");
  const int64_t hd = p.heads * p.head_dim, kv_hd = p.kv_heads * p.head_dim;
  if (p.q_row_stride == 0) p.q_row_stride = hd;
  if (p.k_row_stride == 0) p.k_row_stride = kv_hd;
  if (p.v_row_stride == 0) p.v_row_stride = kv_hd;
  if (p.out_row_stride == 0) p.out_row_stride = hd;
  if (p.q_batch_stride == 0) p.q_batch_stride = p.q_len * p.q_row_stride;
  if (p.k_batch_stride == 0) p.k_batch_stride = p.kv_len * p.k_row_stride;
  if (p.v_batch_stride == 0) p.v_batch_stride = p.kv_len * p.v_row_stride;
  if (p.out_batch_stride == 0) p.out_batch_stride = p.q_len * p.out_row_stride;
  if (p.mask_batch_stride == 0) p.mask_batch_stride = p.kv_len;
  PALI_CHECK_ARG(p.q_row_stride >= hd && p.out_row_stride >= hd,
                 "attention: q and out row strides must be >= heads*head_dim = ", hd);
  PALI_CHECK_ARG(p.k_row_stride >= kv_hd && p.v_row_stride >= kv_hd,
                 "attention: k and v row strides must be >= kv_heads*head_dim = ", kv_hd);
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

#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    run_attention<Avx2Attention>(p);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { run_attention<LaneAttention<decltype(lanes)>>(p); });
}

void merge_attention(float* out_a, const float* lse_a, const float* out_b, const float* lse_b, int64_t rows,
                     int64_t heads, int64_t head_dim) {
  PALI_CHECK_ARG(rows >= 0 && heads > 0 && head_dim > 0, "merge_attention: bad sizes");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      const float la = lse_a[r * heads + h], lb = lse_b[r * heads + h];
      float* a = out_a + (r * heads + h) * head_dim;
      const float* b = out_b + (r * heads + h) * head_dim;
      if (lb == kNegInf) continue;
      if (la == kNegInf) {
        for (int64_t c = 0; c < head_dim; ++c) a[c] = b[c];
        continue;
      }
      const float m = std::max(la, lb);
      const float wa = std::exp(la - m), wb = std::exp(lb - m), inv = 1.0f / (wa + wb);
      for (int64_t c = 0; c < head_dim; ++c) a[c] = (wa * a[c] + wb * b[c]) * inv;
    }
}

}  // namespace pali
