// Pieces shared by the T5 encoder and decoder: their block spec, the gated
// feed-forward block, and the relative position bias embedding.
#pragma once

#include <string>

#include "models/weights.h"
#include "models/workspace.h"
#include "ops/activations.h"
#include "ops/linear.h"

namespace pali {

// What a T5 stack (encoder or decoder) needs to know, and nothing else of the
// model's config: the architecture that uses it fills it in.
struct T5Spec {
  int64_t d_model = 0;
  int64_t d_kv = 0;
  int64_t num_heads = 0;
  int64_t d_ff = 0;
  int64_t layers = 0;
  Activation activation = Activation::gelu_tanh;  // of the gated FFN
  float layer_norm_epsilon = 1e-6f;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  // The decoder's output projection.
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;

  int64_t inner_dim() const { return num_heads * d_kv; }
};

// Gated FFN: wo(act(wi_0 x) * wi_1 x), with wi_0 and wi_1 fused into one GEMM.
struct T5FeedForward {
  LinearWeight wi;  // [2 * d_ff, d_model]: wi_0 rows then wi_1 rows
  LinearWeight wo;  // [d_model, d_ff]
  Activation activation = Activation::gelu_tanh;
  int64_t d_ff = 0;

  T5FeedForward() = default;
  T5FeedForward(const T5Spec& config, WeightStore& weights, const std::string& prefix,
                WeightFormat format);
  // x[rows, d_model] += ffn(h[rows, d_model]).
  void forward_add(const float* h, int64_t rows, float* x, Buffer& wide, Buffer& gated) const;
  // The same with scratch given: wide [rows, 2 * d_ff] and gated [rows, d_ff].
  void forward_add(const float* h, int64_t rows, float* x, float* wide, float* gated) const;
};

}  // namespace pali
