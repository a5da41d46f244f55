// CPU T5 RMSNorm and the fused residual add + RMSNorm.
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/rms_norm.h"
#include "ops/simd_avx2.h"

namespace pali {
namespace {

// Optionally adds delta into the row first (r += delta), then y = r * rsqrt(mean(r^2)+eps) * w.
inline void rms_row(float* r, const float* delta, const float* xr, int64_t d, const float* w,
                    float eps, float* yr) {
  // xr: the row to normalize (r itself when delta is used).
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t j = 0;
  if (delta) {
    for (; j + 16 <= d; j += 16) {
      const __m256 a = _mm256_add_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(delta + j));
      const __m256 b = _mm256_add_ps(_mm256_loadu_ps(r + j + 8), _mm256_loadu_ps(delta + j + 8));
      _mm256_storeu_ps(r + j, a);
      _mm256_storeu_ps(r + j + 8, b);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
    }
  } else {
    for (; j + 16 <= d; j += 16) {
      const __m256 a = _mm256_loadu_ps(xr + j);
      const __m256 b = _mm256_loadu_ps(xr + j + 8);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
    }
  }
  float sq = simd::hsum(_mm256_add_ps(s0, s1));
  for (; j < d; ++j) {
    float v;
    if (delta) {
      v = r[j] + delta[j];
      r[j] = v;
    } else {
      v = xr[j];
    }
    sq += v * v;
  }
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(d) + eps);
  const __m256 iv = _mm256_set1_ps(inv);
  j = 0;
  for (; j + 8 <= d; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + j), iv);
    if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + j));
    _mm256_storeu_ps(yr + j, v);
  }
  for (; j < d; ++j) yr[j] = w ? xr[j] * inv * w[j] : xr[j] * inv;
}

}  // namespace

void rms_norm(const float* x, int64_t m, int64_t d, const float* weight, float eps, float* y) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "rms_norm: bad sizes m=", m, " d=", d);
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "rms_norm: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 13) / d);
  parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r)
      rms_row(nullptr, nullptr, x + r * d, d, weight, eps, y + r * d);
  });
}

void add_rms_norm(float* residual, const float* delta, int64_t m, int64_t d, const float* weight,
                  float eps, float* y) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "add_rms_norm: bad sizes m=", m, " d=", d);
  if (m == 0) return;
  PALI_CHECK_ARG(residual && y, "add_rms_norm: null pointer");
  PALI_CHECK_ARG(y != residual && y != delta, "add_rms_norm: y must not alias residual or delta");
  const int64_t grain = std::max<int64_t>(1, (1 << 13) / d);
  parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r)
      rms_row(residual + r * d, delta ? delta + r * d : nullptr, residual + r * d, d, weight, eps,
              y + r * d);
  });
}

}  // namespace pali
