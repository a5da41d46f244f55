#include "models/gemma_decoder.h"

#include <cmath>

#include "core/error.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/rms_norm.h"
#include "ops/rope.h"

namespace pali {
namespace {

// Gemma's RMSNorm multiplies by (1 + weight): stored that way once, so the
// shared RMSNorm kernel serves it (the sum rounds to float32 as transformers' does).
Tensor one_plus(WeightStore& weights, const std::string& name, int64_t d) {
  Tensor w = weights.f32(name, {d});
  float* p = w.data<float>();
  for (int64_t i = 0; i < d; ++i) p[i] = 1.0f + p[i];
  return w;
}

}  // namespace

GemmaDecoder::GemmaDecoder(const GemmaConfig& config, WeightStore& weights, const std::string& prefix,
                           const Tensor& embedding, bool tie_word_embeddings, WeightFormat format)
    : config_(config) {
  const int64_t d = config.hidden_size, hd = config.head_dim, f = config.intermediate_size;
  const int64_t q_width = config.num_attention_heads * hd, kv_width = config.num_key_value_heads * hd;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = prefix + "layers." + std::to_string(i) + ".";
    Layer l;
    l.qkv = weights.linear_concat({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                                   p + "self_attn.v_proj.weight"},
                                  {q_width, kv_width, kv_width}, d, {}, format);
    l.o = weights.linear(p + "self_attn.o_proj.weight", d, q_width, "", format);
    l.gate_up = weights.linear_concat({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, {f, f}, d, {}, format);
    l.down = weights.linear(p + "mlp.down_proj.weight", d, f, "", format);
    l.input_norm = one_plus(weights, p + "input_layernorm.weight", d);
    l.post_attention_norm = one_plus(weights, p + "post_attention_layernorm.weight", d);
    if (config.gemma2()) {
      l.pre_ffn_norm = one_plus(weights, p + "pre_feedforward_layernorm.weight", d);
      l.post_ffn_norm = one_plus(weights, p + "post_feedforward_layernorm.weight", d);
    }
    l.sliding = config.sliding(i);
    layers_.push_back(std::move(l));
  }
  final_norm_ = one_plus(weights, prefix + "norm.weight", d);
  lm_head_ = tie_word_embeddings ? weights.prepare(embedding, nullptr, format)
                                 : weights.linear("lm_head.weight", config.vocab_size, d, "", format);
  inv_freq_ = rope_inverse_frequencies(config.rope_theta, hd);
  const float scalar = config.gemma2() && config.query_pre_attn_scalar > 0 ? config.query_pre_attn_scalar
                                                                          : static_cast<float>(hd);
  attention_scale_ = 1.0f / std::sqrt(scalar);
}

void GemmaDecoder::forward(float* x, int64_t batch, int64_t length, const int32_t* key_mask,
                           const int64_t* prefix_lengths, const int64_t* positions, float* logits) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim, f = config_.intermediate_size;
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
  const int64_t q_width = heads * hd, qkv_width = (heads + 2 * kv_heads) * hd;
  const int64_t rows = batch * length;
  const float eps = config_.rms_norm_eps;
  Buffer h_buf, qkv_buf, attn_buf, wide_buf, gated_buf, out_buf;
  float* h = h_buf.get(rows * d);
  float* qkv = qkv_buf.get(rows * qkv_width);
  float* attn = attn_buf.get(rows * q_width);
  float* wide = wide_buf.get(rows * 2 * f);
  float* gated = gated_buf.get(rows * f);
  float* sub = out_buf.get(rows * d);  // a sublayer's output before its post-norm (Gemma 2)
  std::vector<int64_t> row_positions(rows);
  for (int64_t r = 0; r < rows; ++r) row_positions[r] = positions[r % length];

  for (const Layer& l : layers_) {
    rms_norm(x, rows, d, l.input_norm.data<float>(), eps, h);
    linear(h, rows, l.qkv, qkv);
    // Queries and keys turn by their positions; values do not.
    rope_inplace(qkv, rows, qkv_width, heads + kv_heads, hd, row_positions.data(), inv_freq_.data());
    AttentionParams p;
    p.batch = batch;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.q_len = p.kv_len = length;
    p.head_dim = hd;
    p.scale = attention_scale_;
    p.softcap = config_.attn_logit_softcapping;
    p.q = qkv;
    p.k = qkv + q_width;
    p.v = qkv + q_width + kv_heads * hd;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = qkv_width;
    p.out = attn;
    p.key_mask = key_mask;
    p.mask_type = MaskType::i32;
    p.causal = true;
    p.prefix_lengths = prefix_lengths;
    p.sliding_window = l.sliding ? config_.sliding_window : 0;
    attention(p);
    if (config_.gemma2()) {
      linear(attn, rows, l.o, sub);
      rms_norm(sub, rows, d, l.post_attention_norm.data<float>(), eps, sub);
      for (int64_t i = 0; i < rows * d; ++i) x[i] += sub[i];
      rms_norm(x, rows, d, l.pre_ffn_norm.data<float>(), eps, h);
    } else {
      linear(attn, rows, l.o, x, /*accumulate=*/true);
      rms_norm(x, rows, d, l.post_attention_norm.data<float>(), eps, h);
    }
    linear(h, rows, l.gate_up, wide);
    gated_activation(wide, rows, f, gated, Activation::gelu_tanh);
    if (config_.gemma2()) {
      linear(gated, rows, l.down, sub);
      rms_norm(sub, rows, d, l.post_ffn_norm.data<float>(), eps, sub);
      for (int64_t i = 0; i < rows * d; ++i) x[i] += sub[i];
    } else {
      linear(gated, rows, l.down, x, /*accumulate=*/true);
    }
  }
  rms_norm(x, rows, d, final_norm_.data<float>(), eps, h);
  linear(h, rows, lm_head_, logits);
  const float cap = config_.final_logit_softcapping;
  if (cap > 0) {
    const int64_t n = rows * config_.vocab_size;
    for (int64_t i = 0; i < n; ++i) logits[i] = cap * std::tanh(logits[i] / cap);
  }
}

}  // namespace pali
