// CPU LayerNorm over rows: an AVX2 kernel on x86-64, NEON and portable ones
// from one template (ops/simd_lanes.h).
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/layer_norm.h"
#include "ops/simd_lanes.h"
#if defined(PALI_CPU_AVX2)
#include "ops/simd_avx2.h"
#endif

namespace pali {
namespace {

#if defined(PALI_CPU_AVX2)
void layer_norm_row_avx2(const float* xr, int64_t d, const float* gamma, const float* beta, float eps, float* yr) {
  // mean
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(xr + j));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(xr + j + 8));
  }
  float sum = simd::hsum(_mm256_add_ps(s0, s1));
  for (; j < d; ++j) sum += xr[j];
  const float mean = sum / static_cast<float>(d);
  // variance of the centred values
  const __m256 mv = _mm256_set1_ps(mean);
  s0 = _mm256_setzero_ps();
  s1 = s0;
  j = 0;
  for (; j + 16 <= d; j += 16) {
    const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(xr + j), mv);
    const __m256 b = _mm256_sub_ps(_mm256_loadu_ps(xr + j + 8), mv);
    s0 = _mm256_fmadd_ps(a, a, s0);
    s1 = _mm256_fmadd_ps(b, b, s1);
  }
  float sq = simd::hsum(_mm256_add_ps(s0, s1));
  for (; j < d; ++j) sq += (xr[j] - mean) * (xr[j] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(d) + eps);
  const __m256 rv = _mm256_set1_ps(rstd);
  j = 0;
  for (; j + 8 <= d; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), mv), rv);
    if (gamma) v = _mm256_mul_ps(v, _mm256_loadu_ps(gamma + j));
    if (beta) v = _mm256_add_ps(v, _mm256_loadu_ps(beta + j));
    _mm256_storeu_ps(yr + j, v);
  }
  for (; j < d; ++j) {
    float v = (xr[j] - mean) * rstd;
    if (gamma) v *= gamma[j];
    if (beta) v += beta[j];
    yr[j] = v;
  }
}
#endif

// The same two passes on L's vectors.
template <typename L>
void layer_norm_row(const float* xr, int64_t d, const float* gamma, const float* beta, float eps, float* yr) {
  using V = typename L::V;
  constexpr int W = L::kWidth;
  V s = L::zero();
  int64_t j = 0;
  for (; j + W <= d; j += W) s = L::add(s, L::load(xr + j));
  float sum = L::hsum(s);
  for (; j < d; ++j) sum += xr[j];
  const float mean = sum / static_cast<float>(d);
  const V mv = L::set1(mean);
  s = L::zero();
  for (j = 0; j + W <= d; j += W) {
    const V a = L::sub(L::load(xr + j), mv);
    s = L::fma(a, a, s);
  }
  float sq = L::hsum(s);
  for (; j < d; ++j) sq += (xr[j] - mean) * (xr[j] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(d) + eps);
  const V rv = L::set1(rstd);
  for (j = 0; j + W <= d; j += W) {
    V v = L::mul(L::sub(L::load(xr + j), mv), rv);
    if (gamma) v = L::mul(v, L::load(gamma + j));
    if (beta) v = L::add(v, L::load(beta + j));
    L::store(yr + j, v);
  }
  for (; j < d; ++j) {
    float v = (xr[j] - mean) * rstd;
    if (gamma) v *= gamma[j];
    if (beta) v += beta[j];
    yr[j] = v;
  }
}

}  // namespace

void layer_norm(const float* x, int64_t m, int64_t d, const float* gamma, const float* beta,
                float eps, float* y) {
  PALI_CHECK_ARG(m >= 0 && d > 0, "layer_norm: bad sizes m=", m, " d=", d);
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "layer_norm: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 13) / d);
  const auto rows = [&](auto row) {
    parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) row(x + r * d, d, gamma, beta, eps, y + r * d);
    });
  };
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    rows(layer_norm_row_avx2);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { rows(layer_norm_row<decltype(lanes)>); });
}

}  // namespace pali
