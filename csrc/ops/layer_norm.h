// LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * gamma + beta.
#pragma once

#include <cstdint>

namespace pali {

// x, y: [m, d] row-major float32 (y may equal x: in place). gamma, beta: [d];
// either may be null (1 / 0). Variance is the biased one (PyTorch's LayerNorm),
// computed in two passes in float32 with a float64-free, cancellation-safe form.
void layer_norm(const float* x, int64_t m, int64_t d, const float* gamma, const float* beta,
                float eps, float* y);

}  // namespace pali
