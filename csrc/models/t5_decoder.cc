// The T5 decoder stack of t5_decoder.h: cached self-attention, cross-attention
// to each request's encoder output, the feed-forward blocks and the head.
#include "models/t5_decoder.h"

#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "core/system_memory.h"
#include "models/cache_reorder.h"
#include "models/joined_rows.h"
#include "ops/attention.h"
#include "ops/position_bucket.h"
#include "ops/rms_norm.h"

namespace pali {

T5Decoder::T5Decoder(const T5Spec& config, WeightStore& weights, const Tensor& embedding,
                     WeightFormat format)
    : config_(config), embedding_(embedding) {
  const int64_t d = config.d_model, inner = config.inner_dim();
  relative_attention_bias_ = weights.f32("decoder.relative_attention_bias.weight",
                                         {config.relative_attention_num_buckets, config.num_heads});
  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string prefix = "decoder.blocks." + std::to_string(i) + ".";
    Layer l;
    l.self_attn_norm = weights.f32(prefix + "self_attn_norm.weight", {d});
    l.self_qkv = weights.linear_concat(
        {prefix + "self_attn.q.weight", prefix + "self_attn.k.weight", prefix + "self_attn.v.weight"},
        {inner, inner, inner}, d, {}, format);
    l.self_o = weights.linear(prefix + "self_attn.o.weight", d, inner, "", format);
    l.cross_attn_norm = weights.f32(prefix + "cross_attn_norm.weight", {d});
    l.cross_q = weights.linear(prefix + "cross_attn.q.weight", inner, d, "", format);
    l.cross_kv = weights.linear_concat({prefix + "cross_attn.k.weight", prefix + "cross_attn.v.weight"},
                                       {inner, inner}, d, {}, format);
    l.cross_o = weights.linear(prefix + "cross_attn.o.weight", d, inner, "", format);
    l.ffn_norm = weights.f32(prefix + "ffn_norm.weight", {d});
    l.ffn = T5FeedForward(config, weights, prefix + "ffn.", format);
    layers_.push_back(std::move(l));
  }
  final_norm_ = weights.f32("decoder.final_norm.weight", {d});
  if (config.tie_word_embeddings) {
    lm_head_ = weights.prepare(embedding, nullptr, format);
    lm_head_scale_ = 1.0f / std::sqrt(static_cast<float>(d));
  } else {
    lm_head_ = weights.linear("lm_head.weight", config.vocab_size, d, "", format);
  }
}

DecoderState T5Decoder::start(const float* memory, const int32_t* mask, int64_t requests, int64_t enc_len,
                              int64_t beams, int64_t capacity) const {
  const int64_t inner = config_.inner_dim();
  const double cache_bytes = sizeof(float) * 2.0 * static_cast<double>(inner) * static_cast<double>(layers_.size()) *
                             (static_cast<double>(requests) * beams * capacity + static_cast<double>(requests) * enc_len);
  require_available_memory(cache_bytes, [&] {
    return str_cat("the decoder's key/value caches for ", requests, " request(s) x ", beams, " beam(s) x ",
                   capacity, " tokens (max_new_tokens)");
  });
  DecoderState s;
  s.requests = requests;
  s.rows = requests * beams;
  s.row_request.resize(s.rows);
  for (int64_t r = 0; r < s.rows; ++r) s.row_request[r] = r / beams;
  s.row_start.assign(s.rows, 0);
  s.row_limit.assign(s.rows, capacity);
  s.row_capacity = s.rows;
  s.request_capacity = requests;
  s.capacity = capacity;
  s.enc_len = enc_len;
  s.enc_mask.assign(mask, mask + requests * enc_len);
  s.self_kv.resize(layers_.size());
  s.cross_kv.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    s.self_kv[i].get(s.rows * capacity * 2 * inner);
    linear(memory, requests * enc_len, layers_[i].cross_kv, s.cross_kv[i].get(requests * enc_len * 2 * inner));
  }
  build_bias_table(s);
  return s;
}

void T5Decoder::build_bias_table(DecoderState& s) const {
  // Distances -(capacity - 1) .. capacity - 1: causal masking hides the positive
  // ones, but a teacher-forced block of several queries still indexes them.
  const int64_t heads = config_.num_heads, capacity = s.capacity;
  s.bias_table.resize(heads * (2 * capacity - 1));
  relative_bias_table(relative_attention_bias_.data<float>(), config_.relative_attention_num_buckets, heads,
                      /*bidirectional=*/false, config_.relative_attention_max_distance,
                      /*rel_offset=*/capacity - 1, /*num_rel=*/2 * capacity - 1, s.bias_table.data());
}

void T5Decoder::step(DecoderState& s, const int64_t* tokens, int64_t q_len, float* logits,
                     bool all_positions) const {
  const int64_t d = config_.d_model, inner = config_.inner_dim(), heads = config_.num_heads;
  const int64_t vocab = config_.vocab_size;
  PALI_CHECK(s.length + q_len <= s.capacity, "decoder cache full: ", s.length, " + ", q_len, " > ",
             s.capacity);
  const int64_t rows = s.rows * q_len;
  const float eps = config_.layer_norm_epsilon;
  float* x = s.x.get(rows * d);
  float* h = s.h.get(rows * d);
  float* qkv = s.qkv.get(rows * 3 * inner);
  float* attn = s.attn.get(rows * inner);
  float* q = s.q.get(rows * inner);

  const float* table = embedding_.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t token = tokens[r];
    PALI_CHECK_ARG(token >= 0 && token < vocab, "token id ", token, " is outside the vocabulary of ", vocab);
    std::memcpy(x + r * d, table + token * d, d * sizeof(float));
  }

  const int64_t position = s.length;
  const bool joined = has_joined_rows(s.row_start, s.rows);
  if (joined) joined_rows_mask(s.row_start, s.rows, position + q_len, s.slot_mask);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& l = layers_[li];
    float* cache = s.self_kv[li].data();
    const int64_t cache_row = 2 * inner, cache_batch = s.capacity * cache_row;

    rms_norm(x, rows, d, l.self_attn_norm.data<float>(), eps, h);
    linear(h, rows, l.self_qkv, qkv);
    for (int64_t b = 0; b < s.rows; ++b)
      for (int64_t t = 0; t < q_len; ++t) {
        const float* src = qkv + (b * q_len + t) * 3 * inner + inner;  // K then V, contiguous
        std::memcpy(cache + b * cache_batch + (position + t) * cache_row, src, 2 * inner * sizeof(float));
      }
    AttentionParams p;
    p.batch = s.rows;
    p.heads = heads;
    p.q_len = q_len;
    p.kv_len = position + q_len;
    p.head_dim = config_.d_kv;
    p.scale = 1.0f;
    p.q = qkv;
    p.q_row_stride = 3 * inner;
    p.k = cache;
    p.v = cache + inner;
    p.k_row_stride = p.v_row_stride = cache_row;
    p.k_batch_stride = p.v_batch_stride = cache_batch;
    p.out = attn;
    p.causal = true;
    p.q_offset = position;
    p.rel_bias = s.bias_table.data();
    p.rel_bias_stride = 2 * s.capacity - 1;
    p.rel_offset = s.capacity - 1;
    if (joined) {
      p.key_mask = s.slot_mask.data();
      p.mask_type = MaskType::u8;
    }
    attention(p);
    linear(attn, rows, l.self_o, x, /*accumulate=*/true);

    rms_norm(x, rows, d, l.cross_attn_norm.data<float>(), eps, h);
    linear(h, rows, l.cross_q, q);
    AttentionParams c;
    c.batch = s.rows;
    c.heads = heads;
    c.q_len = q_len;
    c.kv_len = s.enc_len;
    c.head_dim = config_.d_kv;
    c.scale = 1.0f;
    c.q = q;
    c.k = s.cross_kv[li].data();
    c.v = s.cross_kv[li].data() + inner;
    c.k_row_stride = c.v_row_stride = 2 * inner;
    c.out = attn;
    c.key_mask = s.enc_mask.data();
    c.mask_type = MaskType::i32;
    c.kv_batch_index = s.row_request.data();
    c.kv_batches = s.requests;
    attention(c);
    linear(attn, rows, l.cross_o, x, /*accumulate=*/true);

    rms_norm(x, rows, d, l.ffn_norm.data<float>(), eps, h);
    l.ffn.forward_add(h, rows, x, s.wide, s.gated);
  }
  s.length += q_len;

  // Only the rows whose logits are wanted go through the final norm and the head.
  const int64_t out_rows = all_positions ? rows : s.rows;
  if (!all_positions && q_len > 1)
    for (int64_t b = 0; b < s.rows; ++b)
      std::memmove(x + b * d, x + (b * q_len + q_len - 1) * d, d * sizeof(float));
  rms_norm(x, out_rows, d, final_norm_.data<float>(), eps, h);
  if (lm_head_scale_ != 1.0f)
    for (int64_t i = 0; i < out_rows * d; ++i) h[i] *= lm_head_scale_;
  linear(h, out_rows, lm_head_, logits);
}

void T5Decoder::reorder(DecoderState& s, const int64_t* source, int64_t rows) const {
  check_row_sources(source, rows, s.rows);
  const int64_t row_floats = 2 * config_.inner_dim();
  reorder_cache_rows(s.self_kv, rows, s.capacity * row_floats, s.length * row_floats, source, s.reorder_scratch);
  gather_rows(s.row_request, source, rows);
  gather_rows(s.row_start, source, rows);
  gather_rows(s.row_limit, source, rows);
  s.rows = rows;
}

void T5Decoder::append(DecoderState& s, DecoderState& o) const {
  auto joinable = [](DecoderState& d) {
    return JoinableState{d.self_kv,  d.cross_kv, d.enc_mask, d.row_request, d.row_start,    d.row_limit,
                         d.rows,     d.requests, d.capacity, d.length,      d.enc_len,      d.row_capacity,
                         d.request_capacity, {}};
  };
  const int64_t capacity = s.capacity;
  join_states(joinable(s), joinable(o), 2 * config_.inner_dim(), "the decoder's key/value caches");
  if (s.capacity != capacity) build_bias_table(s);
  o = DecoderState();
}

}  // namespace pali
