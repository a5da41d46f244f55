// T5 RMSNorm: y = x / sqrt(mean(x^2) + eps) * w (no mean subtraction, no bias),
// and the fused residual add + RMSNorm of a T5 block boundary.
#pragma once

#include <cstdint>

namespace pali {

// x, y: [m, d] row-major float32 (y may equal x). weight: [d], or null (1).
void rms_norm(const float* x, int64_t m, int64_t d, const float* weight, float eps, float* y);

// residual[m, d] += delta[m, d]; then y = rms_norm(residual). y must not alias
// residual or delta (it is the next sublayer's input). delta may be null (no add).
void add_rms_norm(float* residual, const float* delta, int64_t m, int64_t d, const float* weight,
                  float eps, float* y);

}  // namespace pali
