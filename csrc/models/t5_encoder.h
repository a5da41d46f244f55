// The T5 v1.1 / mT5 encoder: RMSNorm, self-attention without 1/sqrt(d) scaling
// and with a bidirectional bucketed relative position bias (one table, in layer
// 0, shared by all layers), gated FFN, final RMSNorm.
//
//   x float32[B, T, d_model] (embeddings) -> memory float32[B, T, d_model], in place
//   mask int32[B, T]: 1 for real tokens (image tokens and prompt), 0 for padding
#pragma once

#include <vector>

#include "models/t5_layers.h"
#include "models/weights.h"

namespace pali {

class T5Encoder {
 public:
  T5Encoder(const T5Spec& config, WeightStore& weights, WeightFormat format);
  void forward(float* x, int64_t batch, int64_t seq, const int32_t* mask) const;

 private:
  struct Layer {
    Tensor attn_norm, ffn_norm;
    LinearWeight qkv, o;
    T5FeedForward ffn;
  };
  T5Spec config_;
  Tensor relative_attention_bias_;  // [num_buckets, num_heads]
  std::vector<Layer> layers_;
  Tensor final_norm_;
  size_t layer_bytes_ = 0;  // packed weights of the largest layer
};

}  // namespace pali
