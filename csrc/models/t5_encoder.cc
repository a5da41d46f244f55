#include "models/t5_encoder.h"

#include <algorithm>

#include "core/parallel.h"
#include "models/attention_rows.h"
#include "ops/attention.h"
#include "ops/position_bucket.h"
#include "ops/rms_norm.h"

namespace pali {

T5Encoder::T5Encoder(const T5Spec& config, WeightStore& weights, WeightFormat format) : config_(config) {
  const int64_t d = config.d_model, inner = config.inner_dim();
  relative_attention_bias_ = weights.f32("encoder.relative_attention_bias.weight",
                                         {config.relative_attention_num_buckets, config.num_heads});
  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string prefix = "encoder.blocks." + std::to_string(i) + ".";
    Layer l;
    l.attn_norm = weights.f32(prefix + "attn_norm.weight", {d});
    l.qkv = weights.linear_concat({prefix + "attn.q.weight", prefix + "attn.k.weight", prefix + "attn.v.weight"},
                                  {inner, inner, inner}, d, {}, format);
    l.o = weights.linear(prefix + "attn.o.weight", d, inner, "", format);
    l.ffn_norm = weights.f32(prefix + "ffn_norm.weight", {d});
    l.ffn = T5FeedForward(config, weights, prefix + "ffn.", format);
    layer_bytes_ = std::max(layer_bytes_, l.qkv.weight_bytes() + l.o.weight_bytes() + l.ffn.wi.weight_bytes() +
                                              l.ffn.wo.weight_bytes());
    layers_.push_back(std::move(l));
  }
  final_norm_ = weights.f32("encoder.final_norm.weight", {d});
}

void T5Encoder::forward(float* x, int64_t batch, int64_t seq, const int32_t* mask) const {
  const int64_t d = config_.d_model, inner = config_.inner_dim(), heads = config_.num_heads;
  const int64_t d_ff = config_.d_ff, rows = batch * seq;
  const float eps = config_.layer_norm_epsilon;
  Buffer h_buf, qkv_buf, attn_buf, table_buf, wide_buf, gated_buf;
  float* h = h_buf.get(rows * d);
  float* qkv = qkv_buf.get(rows * 3 * inner);
  float* attn = attn_buf.get(rows * inner);
  float* wide = wide_buf.get(rows * 2 * d_ff);
  float* gated = gated_buf.get(rows * d_ff);

  // Distances j - i span [-(seq - 1), seq - 1]: computed once for all layers.
  const int64_t rel_offset = seq - 1, num_rel = 2 * seq - 1;
  float* table = table_buf.get(heads * num_rel);
  relative_bias_table(relative_attention_bias_.data<float>(), config_.relative_attention_num_buckets, heads,
                      /*bidirectional=*/true, config_.relative_attention_max_distance, rel_offset, num_rel,
                      table);
  AttentionParams whole;
  whole.batch = batch;
  whole.heads = heads;
  whole.q_len = whole.kv_len = seq;
  whole.head_dim = config_.d_kv;
  whole.scale = 1.0f;
  whole.out = attn;
  whole.key_mask = mask;
  whole.mask_type = MaskType::i32;
  whole.rel_bias = table;
  whole.rel_bias_stride = num_rel;
  whole.rel_offset = rel_offset;

  // Two passes per layer: attention reads every row's keys and values.
  const int64_t min_rows = layer_pass_min_rows(layer_bytes_, rows);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
      const int64_t m = re - rb;
      rms_norm(x + rb * d, m, d, l.attn_norm.data<float>(), eps, h + rb * d);
      linear(h + rb * d, m, l.qkv, qkv + rb * 3 * inner);
    });
    parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
      const int64_t m = re - rb;
      float* xr = x + rb * d;
      float* hr = h + rb * d;
      attention_rows(whole, qkv, rb, re);
      linear(attn + rb * inner, m, l.o, xr, /*accumulate=*/true);
      rms_norm(xr, m, d, l.ffn_norm.data<float>(), eps, hr);
      l.ffn.forward_add(hr, m, xr, wide + rb * 2 * d_ff, gated + rb * d_ff);
    });
  }
  parallel_rows(rows, min_rows, [&](int64_t rb, int64_t re) {
    const int64_t m = re - rb;
    rms_norm(x + rb * d, m, d, final_norm_.data<float>(), eps, h + rb * d);
    std::copy(h + rb * d, h + re * d, x + rb * d);
  });
}

}  // namespace pali
