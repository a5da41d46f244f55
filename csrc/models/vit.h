// The vision encoder: ViT with learned position embeddings, pre-LayerNorm
// blocks (MHA with biases, tanh-GELU MLP), a final LayerNorm, no CLS token and
// no pooling; followed by the projector into the text model's width.
//
//   pixels float32[B, C, S, S] (normalized) -> visual tokens float32[B, N, d_model]
#pragma once

#include <vector>

#include "models/pali_config.h"
#include "models/weights.h"
#include "models/workspace.h"
#include "ops/linear.h"

namespace pali {

class VisionEncoder {
 public:
  VisionEncoder(const PaliConfig& config, WeightStore& weights, WeightFormat format);
  // out: [batch * num_patches, d_model].
  void forward(const float* pixels, int64_t batch, float* out) const;
  int64_t num_tokens() const { return num_patches_; }

 private:
  struct Block {
    Tensor norm1_weight, norm1_bias, norm2_weight, norm2_bias;
    LinearWeight qkv, out, fc1, fc2;
  };
  const PaliConfig& config_;
  int64_t num_patches_;
  LinearWeight patch_embed_;
  Tensor pos_embed_;
  std::vector<Block> blocks_;
  Tensor norm_weight_, norm_bias_;
  LinearWeight projector_;
  size_t layer_bytes_ = 0;  // packed weights of the largest block
};

}  // namespace pali
