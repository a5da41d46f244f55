// The vision tower both architectures share: a ViT with learned position
// embeddings, pre-LayerNorm blocks (multi-head attention with biases,
// tanh-GELU MLP), a final LayerNorm, no CLS token and no pooling, followed by
// a linear projector into the text model's width. PaLI's ViT and PaliGemma's
// SigLIP are this tower under different weight names: a small spec gives the
// sizes and the names.
//
//   pixels float32[B, C, S, S] (normalized) -> visual tokens float32[B, N, out_dim]
#pragma once

#include <string>
#include <vector>

#include "models/weights.h"
#include "models/workspace.h"
#include "ops/linear.h"

namespace pali {

struct VisionTowerSpec {
  int64_t image_size = 0, patch_size = 0, channels = 3;
  int64_t width = 0, depth = 0, heads = 0, mlp_dim = 0;
  int64_t out_dim = 0;  // the projector's output width
  float layer_norm_eps = 1e-6f;

  // Weight names: `patch` and the block parts have ".weight" (and ".bias")
  // appended; block i's parts are prefixed with block_prefix + i + ".".
  std::string patch, position;
  bool position_has_batch_dim = false;  // [1, N, W] rather than [N, W]
  std::string block_prefix, norm1, norm2, q, k, v, out, fc1, fc2;
  std::string final_norm, projector;

  int64_t num_patches() const { return patch_size ? (image_size / patch_size) * (image_size / patch_size) : 0; }
};

class VisionTower {
 public:
  VisionTower(const VisionTowerSpec& spec, WeightStore& weights, WeightFormat format);
  // out: [batch * num_patches, out_dim].
  void forward(const float* pixels, int64_t batch, float* out) const;
  int64_t num_tokens() const { return spec_.num_patches(); }

 private:
  struct Block {
    Tensor norm1_weight, norm1_bias, norm2_weight, norm2_bias;
    LinearWeight qkv, out, fc1, fc2;
  };
  VisionTowerSpec spec_;
  LinearWeight patch_embed_;
  Tensor pos_embed_;
  std::vector<Block> blocks_;
  Tensor norm_weight_, norm_bias_;
  LinearWeight projector_;
  size_t layer_bytes_ = 0;  // packed weights of the largest block
};

}  // namespace pali
