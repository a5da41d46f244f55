// CPU T5 RMSNorm and the fused residual add + RMSNorm: an AVX2 kernel on
// x86-64, NEON and portable ones from one template (ops/simd_lanes.h).
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/rms_norm.h"
#include "ops/simd_lanes.h"
#if defined(PALI_CPU_AVX2)
#include "ops/simd_avx2.h"
#endif

namespace pali {
namespace {

#if defined(PALI_CPU_AVX2)
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
#endif

// The same on L's vectors.
template <typename L>
void rms_row_lanes(float* r, const float* delta, const float* xr, int64_t d, const float* w, float eps,
                   float* yr) {
  using V = typename L::V;
  constexpr int W = L::kWidth;
  V s = L::zero();
  int64_t j = 0;
  for (; j + W <= d; j += W) {
    V a = L::load(xr + j);
    if (delta) {
      a = L::add(a, L::load(delta + j));
      L::store(r + j, a);
    }
    s = L::fma(a, a, s);
  }
  float sq = L::hsum(s);
  for (; j < d; ++j) {
    float v = xr[j];
    if (delta) {
      v += delta[j];
      r[j] = v;
    }
    sq += v * v;
  }
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(d) + eps);
  const V iv = L::set1(inv);
  for (j = 0; j + W <= d; j += W) {
    V v = L::mul(L::load(xr + j), iv);
    if (w) v = L::mul(v, L::load(w + j));
    L::store(yr + j, v);
  }
  for (; j < d; ++j) yr[j] = w ? xr[j] * inv * w[j] : xr[j] * inv;
}

// rms_row's AVX2 kernel, or the chosen lanes' (the portable and NEON paths).
template <typename F>
void with_row_kernel(F&& f) {
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    f(rms_row);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { f(rms_row_lanes<decltype(lanes)>); });
}

}  // namespace

void rms_norm(const float* x, int64_t m, int64_t d, const float* weight, float eps, float* y) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "rms_norm: bad sizes m=", m, " d=", d);
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "rms_norm: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 13) / d);
  with_row_kernel([&](auto row) {
    parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) row(nullptr, nullptr, x + r * d, d, weight, eps, y + r * d);
    });
  });
}

void add_rms_norm(float* residual, const float* delta, int64_t m, int64_t d, const float* weight,
                  float eps, float* y) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "add_rms_norm: bad sizes m=", m, " d=", d);
  if (m == 0) return;
  PALI_CHECK_ARG(residual && y, "add_rms_norm: null pointer");
  PALI_CHECK_ARG(y != residual && y != delta, "add_rms_norm: y must not alias residual or delta");
  const int64_t grain = std::max<int64_t>(1, (1 << 13) / d);
  with_row_kernel([&](auto row) {
    parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r)
        row(residual + r * d, delta ? delta + r * d : nullptr, residual + r * d, d, weight, eps, y + r * d);
    });
  });
}

}  // namespace pali
