// CPU activations: tanh-GELU, SiLU, ReLU, the gated FFN activation and
// soft-capping; AVX2 kernels on x86-64, NEON and portable ones from one
// template (ops/simd_lanes.h).
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/simd_lanes.h"
#if defined(PALI_CPU_AVX2)
#include "ops/simd_avx2.h"
#endif

namespace pali {

Activation activation_from_name(const std::string& name) {
  if (name == "gelu_tanh" || name == "gelu_new" || name == "gelu_pytorch_tanh" ||
      name == "gelu_fast")
    return Activation::gelu_tanh;
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "relu") return Activation::relu;
  throw InvalidArgument(str_cat("unknown activation '", name, "' (expected gelu_tanh, silu or relu)"));
}

namespace {

#if defined(PALI_CPU_AVX2)
// gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u) = x / (1 + exp(-2u)),
// u = sqrt(2/pi) (x + 0.044715 x^3).
inline __m256 gelu_vec(__m256 x) {
  const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
  const __m256 e = simd::exp(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
inline __m256 silu_vec(__m256 x) {
  const __m256 e = simd::exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
inline __m256 act_vec(__m256 x, Activation act) {
  switch (act) {
    case Activation::gelu_tanh: return gelu_vec(x);
    case Activation::silu: return silu_vec(x);
    default: return _mm256_max_ps(x, _mm256_setzero_ps());
  }
}

template <typename F>
void for_vectors(int64_t n, F&& fn) {
  // fn(offset, count) over n floats in chunks of 8 (the last possibly shorter).
  parallel_for_aligned(0, n, 8, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i += 8) fn(i, std::min<int64_t>(8, e - i));
  });
}

void activation_avx2(float* x, int64_t n, Activation act) {
  for_vectors(n, [&](int64_t i, int64_t c) {
    if (c == 8) {
      _mm256_storeu_ps(x + i, act_vec(_mm256_loadu_ps(x + i), act));
    } else {
      const __m256i mk = simd::tail_mask(c);
      _mm256_maskstore_ps(x + i, mk, act_vec(_mm256_maskload_ps(x + i, mk), act));
    }
  });
}

inline __m256 softcap_vec(__m256 x, __m256 cap, __m256 inverse_cap) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 u = _mm256_mul_ps(x, inverse_cap);
  const __m256 e = simd::exp(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_andnot_ps(sign, u)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
  return _mm256_mul_ps(cap, _mm256_or_ps(t, _mm256_and_ps(sign, u)));
}

// One thread over n floats: softcap_inplace's chunks and softcap_row.
void softcap_span_avx2(float* x, int64_t n, float cap) {
  const __m256 c = _mm256_set1_ps(cap), inverse = _mm256_set1_ps(1.0f / cap);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, softcap_vec(_mm256_loadu_ps(x + i), c, inverse));
  if (i < n) {
    const __m256i mk = simd::tail_mask(n - i);
    _mm256_maskstore_ps(x + i, mk, softcap_vec(_mm256_maskload_ps(x + i, mk), c, inverse));
  }
}

void gated_row_avx2(const float* g, const float* u, float* o, int64_t f, Activation act) {
  int64_t j = 0;
  for (; j + 8 <= f; j += 8)
    _mm256_storeu_ps(o + j, _mm256_mul_ps(act_vec(_mm256_loadu_ps(g + j), act), _mm256_loadu_ps(u + j)));
  if (j < f) {
    const __m256i mk = simd::tail_mask(f - j);
    _mm256_maskstore_ps(o + j, mk, _mm256_mul_ps(act_vec(_mm256_maskload_ps(g + j, mk), act),
                                                 _mm256_maskload_ps(u + j, mk)));
  }
}
#endif

// The same formulas on L's vectors (the portable and NEON paths).
template <typename L>
inline typename L::V act_lanes(typename L::V x, Activation act) {
  using V = typename L::V;
  switch (act) {
    case Activation::gelu_tanh: {
      const V x3 = L::mul(L::mul(x, x), x);
      const V u = L::mul(L::set1(0.7978845608028654f), L::fma(L::set1(0.044715f), x3, x));
      const V e = L::exp(L::mul(L::set1(-2.0f), u));
      return L::div(x, L::add(L::set1(1.0f), e));
    }
    case Activation::silu: return L::div(x, L::add(L::set1(1.0f), L::exp(L::sub(L::zero(), x))));
    default: return L::max(x, L::zero());
  }
}

template <typename L>
inline typename L::V softcap_lanes(typename L::V x, float cap) {
  using V = typename L::V;
  const V u = L::mul(x, L::set1(1.0f / cap));
  const V magnitude = L::max(u, L::sub(L::zero(), u));
  const V e = L::exp(L::mul(L::set1(-2.0f), magnitude));
  const V t = L::div(L::sub(L::set1(1.0f), e), L::add(L::set1(1.0f), e));
  return L::mul(L::set1(cap), L::copysign(t, u));
}

template <typename L>
void softcap_span(float* x, int64_t n, float cap) {
  int64_t i = 0;
  for (; i + L::kWidth <= n; i += L::kWidth) L::store(x + i, softcap_lanes<L>(L::load(x + i), cap));
  for (; i < n; ++i) x[i] = softcap_lanes<simd::ScalarLanes>(x[i], cap);
}

template <typename L>
void activation_span(float* x, int64_t n, Activation act) {
  int64_t i = 0;
  for (; i + L::kWidth <= n; i += L::kWidth) L::store(x + i, act_lanes<L>(L::load(x + i), act));
  for (; i < n; ++i) x[i] = act_lanes<simd::ScalarLanes>(x[i], act);
}

template <typename L>
void gated_row(const float* g, const float* u, float* o, int64_t f, Activation act) {
  int64_t j = 0;
  for (; j + L::kWidth <= f; j += L::kWidth)
    L::store(o + j, L::mul(act_lanes<L>(L::load(g + j), act), L::load(u + j)));
  for (; j < f; ++j) o[j] = act_lanes<simd::ScalarLanes>(g[j], act) * u[j];
}

}  // namespace

void activation_inplace(float* x, int64_t n, Activation act) {
  PALI_CHECK_ARG(n >= 0 && (n == 0 || x), "activation: bad arguments");
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    activation_avx2(x, n, act);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) {
    using L = decltype(lanes);
    parallel_for_aligned(0, n, 8, 1 << 14, [&](int64_t b, int64_t e) { activation_span<L>(x + b, e - b, act); });
  });
}

void gelu_tanh_inplace(float* x, int64_t n) { activation_inplace(x, n, Activation::gelu_tanh); }

void softcap_inplace(float* x, int64_t n, float cap) {
  PALI_CHECK_ARG(n >= 0 && (n == 0 || x) && cap > 0 && std::isfinite(cap), "softcap: bad arguments");
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    parallel_for_aligned(0, n, 8, 1 << 14, [&](int64_t b, int64_t e) { softcap_span_avx2(x + b, e - b, cap); });
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) {
    using L = decltype(lanes);
    parallel_for_aligned(0, n, 8, 1 << 14, [&](int64_t b, int64_t e) { softcap_span<L>(x + b, e - b, cap); });
  });
}

void softcap_row(float* x, int64_t n, float cap) {
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    softcap_span_avx2(x, n, cap);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { softcap_span<decltype(lanes)>(x, n, cap); });
}

void gated_activation(const float* in, int64_t m, int64_t f, float* out, Activation act) {
  PALI_CHECK_ARG(m >= 0 && f >= 0, "gated_activation: bad sizes");
  if (m == 0 || f == 0) return;
  PALI_CHECK_ARG(in && out, "gated_activation: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / f);
  const auto rows = [&](auto row) {
    parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) row(in + r * 2 * f, in + r * 2 * f + f, out + r * f, f, act);
    });
  };
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    rows(gated_row_avx2);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { rows(gated_row<decltype(lanes)>); });
}

}  // namespace pali
