// Rotary position embedding (RoPE) in the "rotate half" layout of Gemma, Llama
// and transformers: within each head of head_dim = 2h, feature i pairs with
// feature i + h and the pair turns by position * inv_freq[i].
//
//   x'[i]     = x[i] cos(a_i) - x[i + h] sin(a_i)
//   x'[i + h] = x[i + h] cos(a_i) + x[i] sin(a_i),   a_i = position * inv_freq[i]
//
// The angle is computed in float32 (position as float times inv_freq, then
// cos/sin), as transformers' rotary embedding does in float32.
#pragma once

#include <cstdint>
#include <vector>

namespace pali {

// inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim / 2, in float32 as transformers computes it.
std::vector<float> rope_inverse_frequencies(float theta, int64_t head_dim);

// Rotates `heads` heads of head_dim floats in each of `rows` rows of x (row r at
// x + r * row_stride), row r at position positions[r], in place.
void rope_inplace(float* x, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_dim,
                  const int64_t* positions, const float* inv_freq);

}  // namespace pali
