#include "models/vit.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "models/attention_rows.h"
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
  patch_embed_ = weights.prepare(conv.reshape({w, c * p * p}), &conv_bias, format);
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
    layer_bytes_ = std::max(layer_bytes_, b.qkv.weight_bytes() + b.out.weight_bytes() + b.fc1.weight_bytes() +
                                              b.fc2.weight_bytes());
    blocks_.push_back(std::move(b));
  }
  norm_weight_ = weights.f32("vision.norm.weight", {w});
  norm_bias_ = weights.f32("vision.norm.bias", {w});
  projector_ = weights.linear("projector.weight", config.d_model, w, "projector.bias", format);
}

void VisionEncoder::forward(const float* pixels, int64_t batch, float* out) const {
  const int64_t w = config_.vision_width, n = num_patches_, rows = batch * n;
  const int64_t mlp_dim = config_.vision_mlp_dim, d_model = config_.d_model;
  const int64_t heads = config_.vision_heads, head_dim = w / heads;
  const float eps = config_.vision_layer_norm_eps;
  Buffer x_buf, h_buf, qkv_bufs[2], attn_buf, mlp_buf;
  float* x = x_buf.get(rows * w);
  float* h = h_buf.get(rows * w);
  // Blocks alternate between two: a thread may write the next block's keys
  // while another still reads this block's.
  float* qkv_of[2] = {qkv_bufs[0].get(rows * 3 * w), qkv_bufs[1].get(rows * 3 * w)};
  float* attn = attn_buf.get(rows * w);
  float* mlp = mlp_buf.get(rows * mlp_dim);

  patch_embed(pixels, batch, config_.num_channels, config_.image_size, config_.patch_size, patch_embed_,
              pos_embed_.data<float>(), x);
  AttentionParams whole;
  whole.batch = batch;
  whole.heads = heads;
  whole.q_len = whole.kv_len = n;
  whole.head_dim = head_dim;
  whole.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  whole.out = attn;
  // Threads meet only before attention, which reads every row's keys and values.
  parallel_rows(rows, layer_pass_min_rows(layer_bytes_, rows), [&](int64_t rb, int64_t re, const auto& sync) {
    const int64_t m = re - rb;
    float* xr = x + rb * w;
    float* hr = h + rb * w;
    float* mr = mlp + rb * mlp_dim;
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = blocks_[i];
      float* qkv = qkv_of[i % 2];
      layer_norm(xr, m, w, b.norm1_weight.data<float>(), b.norm1_bias.data<float>(), eps, hr);
      linear(hr, m, b.qkv, qkv + rb * 3 * w);
      sync();  // every row's keys and values are written (and the block before last's read)
      attention_rows(whole, qkv, rb, re);
      linear(attn + rb * w, m, b.out, xr, /*accumulate=*/true);
      layer_norm(xr, m, w, b.norm2_weight.data<float>(), b.norm2_bias.data<float>(), eps, hr);
      linear(hr, m, b.fc1, mr);
      gelu_tanh_inplace(mr, m * mlp_dim);
      linear(mr, m, b.fc2, xr, /*accumulate=*/true);
    }
    layer_norm(xr, m, w, norm_weight_.data<float>(), norm_bias_.data<float>(), eps, hr);
    linear(hr, m, projector_, out + rb * d_model);
  });
}

}  // namespace pali
