#include "models/vit.h"

#include <cmath>

#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/layer_norm.h"
#include "ops/patch_embed.h"

namespace pali {

VisionEncoder::VisionEncoder(const PaliConfig& config, WeightStore& weights, WeightFormat format)
    : config_(config), num_patches_(config.num_patches()) {
  const int64_t w = config.vision_width, p = config.patch_size, c = config.num_channels;
  Tensor conv = weights.raw("vision.patch_embed.weight", {w, c, p, p});
  Tensor conv_bias = weights.raw("vision.patch_embed.bias", {w});
  patch_embed_ = prepare_linear(conv.reshape({w, c * p * p}), &conv_bias, format, weights.arena(),
                                format == WeightFormat::i8);
  pos_embed_ = weights.f32("vision.pos_embed", {1, num_patches_, w});
  for (int64_t i = 0; i < config.vision_depth; ++i) {
    const std::string prefix = "vision.blocks." + std::to_string(i) + ".";
    Block b;
    b.norm1_weight = weights.f32(prefix + "norm1.weight", {w});
    b.norm1_bias = weights.f32(prefix + "norm1.bias", {w});
    b.qkv = weights.linear_concat({prefix + "attn.q.weight", prefix + "attn.k.weight", prefix + "attn.v.weight"},
                                  {w, w, w}, w,
                                  {prefix + "attn.q.bias", prefix + "attn.k.bias", prefix + "attn.v.bias"},
                                  format);
    b.out = weights.linear(prefix + "attn.out.weight", w, w, prefix + "attn.out.bias", format);
    b.norm2_weight = weights.f32(prefix + "norm2.weight", {w});
    b.norm2_bias = weights.f32(prefix + "norm2.bias", {w});
    b.fc1 = weights.linear(prefix + "mlp.fc1.weight", config.vision_mlp_dim, w, prefix + "mlp.fc1.bias", format);
    b.fc2 = weights.linear(prefix + "mlp.fc2.weight", w, config.vision_mlp_dim, prefix + "mlp.fc2.bias", format);
    blocks_.push_back(std::move(b));
  }
  norm_weight_ = weights.f32("vision.norm.weight", {w});
  norm_bias_ = weights.f32("vision.norm.bias", {w});
  projector_ = weights.linear("projector.weight", config.d_model, w, "projector.bias", format);
}

void VisionEncoder::forward(const float* pixels, int64_t batch, float* out) const {
  const int64_t w = config_.vision_width, n = num_patches_, rows = batch * n;
  const int64_t heads = config_.vision_heads, head_dim = w / heads;
  const float eps = config_.vision_layer_norm_eps;
  Buffer x_buf, h_buf, qkv_buf, attn_buf, mlp_buf;
  float* x = x_buf.get(rows * w);
  float* h = h_buf.get(rows * w);
  float* qkv = qkv_buf.get(rows * 3 * w);
  float* attn = attn_buf.get(rows * w);
  float* mlp = mlp_buf.get(rows * config_.vision_mlp_dim);

  patch_embed(pixels, batch, config_.num_channels, config_.image_size, config_.patch_size, patch_embed_,
              pos_embed_.data<float>(), x);
  for (const Block& b : blocks_) {
    layer_norm(x, rows, w, b.norm1_weight.data<float>(), b.norm1_bias.data<float>(), eps, h);
    linear(h, rows, b.qkv, qkv);
    AttentionParams p;
    p.batch = batch;
    p.heads = heads;
    p.q_len = p.kv_len = n;
    p.head_dim = head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    p.q = qkv;
    p.k = qkv + w;
    p.v = qkv + 2 * w;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = 3 * w;
    p.out = attn;
    attention(p);
    linear(attn, rows, b.out, x, /*accumulate=*/true);
    layer_norm(x, rows, w, b.norm2_weight.data<float>(), b.norm2_bias.data<float>(), eps, h);
    linear(h, rows, b.fc1, mlp);
    gelu_tanh_inplace(mlp, rows * config_.vision_mlp_dim);
    linear(mlp, rows, b.fc2, x, /*accumulate=*/true);
  }
  layer_norm(x, rows, w, norm_weight_.data<float>(), norm_bias_.data<float>(), eps, h);
  linear(h, rows, projector_, out);
}

}  // namespace pali
