// The Gemma and Gemma 2 decoder stack, as a shared block: RMSNorm with
// (1 + weight), rotary positions, multi-query or grouped-query attention,
// a tanh-GELU gated FFN (GeGLU); Gemma 2 adds post-attention and
// pre/post-FFN norms, attention and final logit soft-capping, a sliding window
// on the layers `layer_types` says, and query_pre_attn_scalar for the scale.
//
// The attention mask is the prefix-LM mask (ops/attention.h): the first
// prefix_lengths[b] positions of sequence b attend to each other both ways,
// later positions attend causally (and within the window on sliding layers);
// padding keys are hidden.
//
//   embeddings float32[B, L, D] -> logits float32[B, L, V]
#pragma once

#include <string>
#include <vector>

#include "models/paligemma_config.h"
#include "models/weights.h"
#include "models/workspace.h"
#include "ops/linear.h"

namespace pali {

class GemmaDecoder {
 public:
  // `prefix`: the weights' name prefix ("model.language_model."); `embedding`:
  // embed_tokens [V, D] float32, the head when tie_word_embeddings.
  GemmaDecoder(const GemmaConfig& config, WeightStore& weights, const std::string& prefix,
               const Tensor& embedding, bool tie_word_embeddings, WeightFormat format);

  // x: [batch, length, D] input embeddings, overwritten. key_mask: int32
  // [batch, length] (0: padding). prefix_lengths: [batch]. positions: [length]
  // (shared by the batch: transformers counts padding). logits: [batch, length, V].
  void forward(float* x, int64_t batch, int64_t length, const int32_t* key_mask, const int64_t* prefix_lengths,
               const int64_t* positions, float* logits) const;

 private:
  struct Layer {
    Tensor input_norm, post_attention_norm, pre_ffn_norm, post_ffn_norm;  // (1 + weight)
    LinearWeight qkv, o, gate_up, down;
    bool sliding = false;
  };
  const GemmaConfig& config_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  LinearWeight lm_head_;
  std::vector<float> inv_freq_;
  float attention_scale_ = 1.0f;
};

}  // namespace pali
