// Pieces shared by the T5 encoder and decoder: attention projections, the gated
// feed-forward block, and the relative position bias embedding.
#pragma once

#include <string>

#include "models/pali_config.h"
#include "models/weights.h"
#include "models/workspace.h"
#include "ops/activations.h"
#include "ops/linear.h"

namespace pali {

// Gated FFN: wo(act(wi_0 x) * wi_1 x), with wi_0 and wi_1 fused into one GEMM.
struct T5FeedForward {
  LinearWeight wi;  // [2 * d_ff, d_model]: wi_0 rows then wi_1 rows
  LinearWeight wo;  // [d_model, d_ff]
  Activation activation = Activation::gelu_tanh;
  int64_t d_ff = 0;

  T5FeedForward() = default;
  T5FeedForward(const PaliConfig& config, WeightStore& weights, const std::string& prefix,
                WeightFormat format);
  // x[rows, d_model] += ffn(h[rows, d_model]).
  void forward_add(const float* h, int64_t rows, float* x, Buffer& wide, Buffer& gated) const;
  // The same with scratch given: wide [rows, 2 * d_ff] and gated [rows, d_ff].
  void forward_add(const float* h, int64_t rows, float* x, float* wide, float* gated) const;
};

// RMSNorm weights of every norm in a layer are float32 [d_model].
inline Activation t5_activation(const PaliConfig& config) {
  return config.feed_forward_proj == "gated-silu" ? Activation::silu : Activation::gelu_tanh;
}

}  // namespace pali
