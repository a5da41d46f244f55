// CPU activations: tanh-GELU, SiLU, ReLU and the gated FFN activation.
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/simd_avx2.h"

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

}  // namespace

void activation_inplace(float* x, int64_t n, Activation act) {
  PALI_CHECK_ARG(n >= 0 && (n == 0 || x), "activation: bad arguments");
  for_vectors(n, [&](int64_t i, int64_t c) {
    if (c == 8) {
      _mm256_storeu_ps(x + i, act_vec(_mm256_loadu_ps(x + i), act));
    } else {
      const __m256i mk = simd::tail_mask(c);
      _mm256_maskstore_ps(x + i, mk, act_vec(_mm256_maskload_ps(x + i, mk), act));
    }
  });
}

void gelu_tanh_inplace(float* x, int64_t n) { activation_inplace(x, n, Activation::gelu_tanh); }

void gated_activation(const float* in, int64_t m, int64_t f, float* out, Activation act) {
  PALI_CHECK_ARG(m >= 0 && f >= 0, "gated_activation: bad sizes");
  if (m == 0 || f == 0) return;
  PALI_CHECK_ARG(in && out, "gated_activation: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / f);
  parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const float* g = in + r * 2 * f;
      const float* u = g + f;
      float* o = out + r * f;
      int64_t j = 0;
      for (; j + 8 <= f; j += 8)
        _mm256_storeu_ps(o + j, _mm256_mul_ps(act_vec(_mm256_loadu_ps(g + j), act),
                                              _mm256_loadu_ps(u + j)));
      if (j < f) {
        const __m256i mk = simd::tail_mask(f - j);
        _mm256_maskstore_ps(o + j, mk, _mm256_mul_ps(act_vec(_mm256_maskload_ps(g + j, mk), act),
                                                     _mm256_maskload_ps(u + j, mk)));
      }
    }
  });
}

}  // namespace pali
