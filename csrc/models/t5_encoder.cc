#include "models/t5_encoder.h"

#include "ops/attention.h"
#include "ops/position_bucket.h"
#include "ops/rms_norm.h"

namespace pali {

T5Encoder::T5Encoder(const PaliConfig& config, WeightStore& weights, WeightFormat format) : config_(config) {
  const int64_t d = config.d_model, inner = config.inner_dim();
  relative_attention_bias_ = weights.f32("encoder.relative_attention_bias.weight",
                                         {config.relative_attention_num_buckets, config.num_heads});
  for (int64_t i = 0; i < config.encoder_layers; ++i) {
    const std::string prefix = "encoder.blocks." + std::to_string(i) + ".";
    Layer l;
    l.attn_norm = weights.f32(prefix + "attn_norm.weight", {d});
    l.qkv = weights.linear_concat({prefix + "attn.q.weight", prefix + "attn.k.weight", prefix + "attn.v.weight"},
                                  {inner, inner, inner}, d, {}, format);
    l.o = weights.linear(prefix + "attn.o.weight", d, inner, "", format);
    l.ffn_norm = weights.f32(prefix + "ffn_norm.weight", {d});
    l.ffn = T5FeedForward(config, weights, prefix + "ffn.", format);
    layers_.push_back(std::move(l));
  }
  final_norm_ = weights.f32("encoder.final_norm.weight", {d});
}

void T5Encoder::forward(float* x, int64_t batch, int64_t seq, const int32_t* mask) const {
  const int64_t d = config_.d_model, inner = config_.inner_dim(), heads = config_.num_heads;
  const int64_t rows = batch * seq;
  const float eps = config_.layer_norm_epsilon;
  Buffer h_buf, qkv_buf, attn_buf, table_buf, wide, gated;
  float* h = h_buf.get(rows * d);
  float* qkv = qkv_buf.get(rows * 3 * inner);
  float* attn = attn_buf.get(rows * inner);

  // Distances j - i span [-(seq - 1), seq - 1]: computed once for all layers.
  const int64_t rel_offset = seq - 1, num_rel = 2 * seq - 1;
  float* table = table_buf.get(heads * num_rel);
  relative_bias_table(relative_attention_bias_.data<float>(), config_.relative_attention_num_buckets, heads,
                      /*bidirectional=*/true, config_.relative_attention_max_distance, rel_offset, num_rel,
                      table);

  for (const Layer& l : layers_) {
    rms_norm(x, rows, d, l.attn_norm.data<float>(), eps, h);
    linear(h, rows, l.qkv, qkv);
    AttentionParams p;
    p.batch = batch;
    p.heads = heads;
    p.q_len = p.kv_len = seq;
    p.head_dim = config_.d_kv;
    p.scale = 1.0f;
    p.q = qkv;
    p.k = qkv + inner;
    p.v = qkv + 2 * inner;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = 3 * inner;
    p.out = attn;
    p.key_mask = mask;
    p.mask_type = MaskType::i32;
    p.rel_bias = table;
    p.rel_bias_stride = num_rel;
    p.rel_offset = rel_offset;
    attention(p);
    linear(attn, rows, l.o, x, /*accumulate=*/true);
    rms_norm(x, rows, d, l.ffn_norm.data<float>(), eps, h);
    l.ffn.forward_add(h, rows, x, wide, gated);
  }
  rms_norm(x, rows, d, final_norm_.data<float>(), eps, h);
  std::copy(h, h + rows * d, x);
}

}  // namespace pali
