#include "models/vision_tower.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "models/attention_rows.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/layer_norm.h"
#include "ops/patch_embed.h"

namespace pali {

VisionTower::VisionTower(const VisionTowerSpec& spec, WeightStore& weights, WeightFormat format) : spec_(spec) {
  const int64_t w = spec.width, p = spec.patch_size, c = spec.channels, n = spec.num_patches();
  Tensor conv = weights.raw(spec.patch + ".weight", {w, c, p, p});
  Tensor conv_bias = weights.raw(spec.patch + ".bias", {w});
  patch_embed_ = weights.prepare(conv.reshape({w, c * p * p}), &conv_bias, format);
  pos_embed_ = weights.f32(spec.position, spec.position_has_batch_dim ? Shape{1, n, w} : Shape{n, w});
  auto norm = [&](const std::string& name, Tensor& weight, Tensor& bias) {
    weight = weights.f32(name + ".weight", {w});
    bias = weights.f32(name + ".bias", {w});
  };
  for (int64_t i = 0; i < spec.depth; ++i) {
    const std::string prefix = spec.block_prefix + std::to_string(i) + ".";
    Block b;
    norm(prefix + spec.norm1, b.norm1_weight, b.norm1_bias);
    b.qkv = weights.linear_concat(
        {prefix + spec.q + ".weight", prefix + spec.k + ".weight", prefix + spec.v + ".weight"}, {w, w, w}, w,
        {prefix + spec.q + ".bias", prefix + spec.k + ".bias", prefix + spec.v + ".bias"}, format);
    b.out = weights.linear(prefix + spec.out + ".weight", w, w, prefix + spec.out + ".bias", format);
    norm(prefix + spec.norm2, b.norm2_weight, b.norm2_bias);
    b.fc1 = weights.linear(prefix + spec.fc1 + ".weight", spec.mlp_dim, w, prefix + spec.fc1 + ".bias", format);
    b.fc2 = weights.linear(prefix + spec.fc2 + ".weight", w, spec.mlp_dim, prefix + spec.fc2 + ".bias", format);
    layer_bytes_ = std::max(layer_bytes_, b.qkv.weight_bytes() + b.out.weight_bytes() + b.fc1.weight_bytes() +
                                              b.fc2.weight_bytes());
    blocks_.push_back(std::move(b));
  }
  norm(spec.final_norm, norm_weight_, norm_bias_);
  projector_ = weights.linear(spec.projector + ".weight", spec.out_dim, w, spec.projector + ".bias", format);
}

void VisionTower::forward(const float* pixels, int64_t batch, float* out) const {
  const int64_t w = spec_.width, n = spec_.num_patches(), rows = batch * n;
  const int64_t mlp_dim = spec_.mlp_dim, d_model = spec_.out_dim;
  const int64_t heads = spec_.heads, head_dim = w / heads;
  const float eps = spec_.layer_norm_eps;
  Buffer x_buf, h_buf, qkv_buf, attn_buf, mlp_buf;
  float* x = x_buf.get(rows * w);
  float* h = h_buf.get(rows * w);
  float* qkv = qkv_buf.get(rows * 3 * w);
  float* attn = attn_buf.get(rows * w);
  float* mlp = mlp_buf.get(rows * mlp_dim);

  patch_embed(pixels, batch, spec_.channels, spec_.image_size, spec_.patch_size, patch_embed_,
              pos_embed_.data<float>(), x);
  AttentionParams whole;
  whole.batch = batch;
  whole.heads = heads;
  whole.q_len = whole.kv_len = n;
  whole.head_dim = head_dim;
  whole.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  whole.out = attn;
  // Two passes per block: attention reads every row's keys and values.
  const int64_t min_rows = layer_pass_min_rows(layer_bytes_, rows);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
      const int64_t m = re - rb;
      layer_norm(x + rb * w, m, w, b.norm1_weight.data<float>(), b.norm1_bias.data<float>(), eps, h + rb * w);
      linear(h + rb * w, m, b.qkv, qkv + rb * 3 * w);
    });
    parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
      const int64_t m = re - rb;
      float* xr = x + rb * w;
      float* hr = h + rb * w;
      float* mr = mlp + rb * mlp_dim;
      attention_rows(whole, qkv, rb, re);
      linear(attn + rb * w, m, b.out, xr, /*accumulate=*/true);
      layer_norm(xr, m, w, b.norm2_weight.data<float>(), b.norm2_bias.data<float>(), eps, hr);
      linear(hr, m, b.fc1, mr);
      gelu_tanh_inplace(mr, m * mlp_dim);
      linear(mr, m, b.fc2, xr, /*accumulate=*/true);
    });
  }
  parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
    const int64_t m = re - rb;
    layer_norm(x + rb * w, m, w, norm_weight_.data<float>(), norm_bias_.data<float>(), eps, h + rb * w);
    linear(h + rb * w, m, projector_, out + rb * d_model);
  });
}

}  // namespace pali
