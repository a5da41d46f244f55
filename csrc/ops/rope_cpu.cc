// CPU rotary position embedding: the angles of a row once, then every head.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/rope.h"

namespace pali {

std::vector<float> rope_inverse_frequencies(float theta, int64_t head_dim) {
  PALI_CHECK_ARG(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even, got ", head_dim);
  PALI_CHECK_ARG(std::isfinite(theta) && theta > 1, "rope: theta must be > 1, got ", theta);
  std::vector<float> inv(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(theta, exponent);
  }
  return inv;
}

void rope_inplace(float* x, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_dim,
                  const int64_t* positions, const float* inv_freq) {
  PALI_CHECK_ARG(rows >= 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0 && row_stride >= heads * head_dim,
                 "rope: bad sizes");
  if (rows == 0) return;
  PALI_CHECK_ARG(x && positions && inv_freq, "rope: null pointer");
  const int64_t half = head_dim / 2;
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / (heads * head_dim)), [&](int64_t begin, int64_t end) {
    std::vector<float> cosines(half), sines(half);
    for (int64_t r = begin; r < end; ++r) {
      const float position = static_cast<float>(positions[r]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = position * inv_freq[i];
        cosines[i] = std::cos(angle);
        sines[i] = std::sin(angle);
      }
      float* row = x + r * row_stride;
      for (int64_t h = 0; h < heads; ++h) {
        float* a = row + h * head_dim;
        float* b = a + half;
        for (int64_t i = 0; i < half; ++i) {
          const float u = a[i], v = b[i];
          a[i] = u * cosines[i] - v * sines[i];
          b[i] = v * cosines[i] + u * sines[i];
        }
      }
    }
  });
}

}  // namespace pali
