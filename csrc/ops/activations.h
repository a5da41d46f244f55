// Activations: tanh-approximated GELU (T5 v1.1 / mT5 "gelu_new", ViT MLP in
// PaLI), the gated FFN activation act(gate) * up, and Gemma 2's soft-capping.
#pragma once

#include <cstdint>
#include <string>

namespace pali {

enum class Activation : uint8_t { gelu_tanh, silu, relu };

// "gelu_tanh" (aliases "gelu_new", "gelu_pytorch_tanh"), "silu" ("swish"), "relu".
Activation activation_from_name(const std::string& name);

// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place on n floats.
void gelu_tanh_inplace(float* x, int64_t n);

// act(x) in place on n floats.
void activation_inplace(float* x, int64_t n, Activation act);

// in: [m, 2f] row-major (first f = gate, the wi_0 output; next f = up, the wi_1
// output: the layout prepare_linear_concat({wi_0, wi_1}) produces);
// out: [m, f] dense = act(gate) * up. out must not overlap in.
void gated_activation(const float* in, int64_t m, int64_t f, float* out, Activation act);

// cap * tanh(x / cap), in place on n floats (Gemma 2's final logits: 257216
// a row, a decode step's largest elementwise pass, so vectorized and
// threaded). tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2 |u|): within
// a few float32 ulps of cap, not of the result, near 0.
void softcap_inplace(float* x, int64_t n, float cap);

// softcap_inplace on one thread, for callers already inside a parallel region
// (attention's scores, Gemma 2's attn_logit_softcapping): no arguments checked.
void softcap_row(float* x, int64_t n, float cap);

}  // namespace pali
