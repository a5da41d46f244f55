// The Gemma decoder stack of gemma_decoder.h: the prompt pass, the decode step
// over each request's shared prompt keys and values and the row's own, the head.
#include "models/gemma_decoder.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/system_memory.h"
#include "models/cache_reorder.h"
#include "models/joined_rows.h"
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
  if (weights.listing()) return w;
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

GemmaDecoder::Scratch GemmaDecoder::scratch(GemmaState& b, int64_t rows) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim, f = config_.intermediate_size;
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
  Scratch s;
  s.h = b.h.get(rows * d);
  s.qkv = b.qkv.get(rows * (heads + 2 * kv_heads) * hd);
  s.attn = b.attn.get(rows * heads * hd);
  s.wide = b.wide.get(rows * 2 * f);
  s.gated = b.gated.get(rows * f);
  s.sub = b.sub.get(rows * d);
  return s;
}

void GemmaDecoder::finish_layer(const Layer& l, float* x, int64_t rows, const Scratch& s) const {
  const int64_t d = config_.hidden_size, f = config_.intermediate_size;
  const float eps = config_.rms_norm_eps;
  if (config_.gemma2()) {
    linear(s.attn, rows, l.o, s.sub);
    rms_norm(s.sub, rows, d, l.post_attention_norm.data<float>(), eps, s.sub);
    add_rms_norm(x, s.sub, rows, d, l.pre_ffn_norm.data<float>(), eps, s.h);
  } else {
    linear(s.attn, rows, l.o, x, /*accumulate=*/true);
    rms_norm(x, rows, d, l.post_attention_norm.data<float>(), eps, s.h);
  }
  linear(s.h, rows, l.gate_up, s.wide);
  gated_activation(s.wide, rows, f, s.gated, Activation::gelu_tanh);
  if (config_.gemma2()) {
    linear(s.gated, rows, l.down, s.sub);
    rms_norm(s.sub, rows, d, l.post_ffn_norm.data<float>(), eps, s.sub);
    for (int64_t i = 0; i < rows * d; ++i) x[i] += s.sub[i];
  } else {
    linear(s.gated, rows, l.down, x, /*accumulate=*/true);
  }
}

void GemmaDecoder::head(const float* x, int64_t rows, float* h, float* logits) const {
  rms_norm(x, rows, config_.hidden_size, final_norm_.data<float>(), config_.rms_norm_eps, h);
  linear(h, rows, lm_head_, logits);
  if (config_.final_logit_softcapping > 0)
    softcap_inplace(logits, rows * config_.vocab_size, config_.final_logit_softcapping);
}

void GemmaDecoder::run_prompt(float* x, int64_t batch, int64_t length, const int32_t* key_mask,
                              const int64_t* prefix_lengths, const int64_t* positions,
                              std::vector<Buffer>* kv_out) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim;
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
  const int64_t q_width = heads * hd, kv_width = kv_heads * hd, qkv_width = q_width + 2 * kv_width;
  const int64_t rows = batch * length;
  GemmaState buffers;
  const Scratch s = scratch(buffers, rows);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& l = layers_[li];
    rms_norm(x, rows, d, l.input_norm.data<float>(), config_.rms_norm_eps, s.h);
    linear(s.h, rows, l.qkv, s.qkv);
    // Queries and keys turn by their positions; values do not.
    rope_inplace(s.qkv, rows, qkv_width, heads + kv_heads, hd, positions, inv_freq_.data());
    if (kv_out) {
      float* kv = (*kv_out)[li].get(rows * 2 * kv_width);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(kv + r * 2 * kv_width, s.qkv + r * qkv_width + q_width, 2 * kv_width * sizeof(float));
    }
    AttentionParams p;
    p.batch = batch;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.q_len = p.kv_len = length;
    p.head_dim = hd;
    p.scale = attention_scale_;
    p.softcap = config_.attn_logit_softcapping;
    p.q = s.qkv;
    p.k = s.qkv + q_width;
    p.v = s.qkv + q_width + kv_width;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = qkv_width;
    p.out = s.attn;
    p.key_mask = key_mask;
    p.mask_type = MaskType::i32;
    p.causal = true;
    p.prefix_lengths = prefix_lengths;
    p.sliding_window = l.sliding ? config_.sliding_window : 0;
    attention(p);
    finish_layer(l, x, rows, s);
  }
}

void GemmaDecoder::forward(float* x, int64_t batch, int64_t length, const int32_t* key_mask,
                           const int64_t* prefix_lengths, const int64_t* positions, float* logits) const {
  run_prompt(x, batch, length, key_mask, prefix_lengths, positions, nullptr);
  Buffer h;
  head(x, batch * length, h.get(batch * length * config_.hidden_size), logits);
}

GemmaState GemmaDecoder::start(float* x, int64_t requests, int64_t prompt_len, const int32_t* key_mask,
                               int64_t beams, int64_t capacity) const {
  const int64_t d = config_.hidden_size, kv_width = config_.num_key_value_heads * config_.head_dim;
  const int64_t layers = static_cast<int64_t>(layers_.size()), rows = requests * beams;
  const double cache_bytes = sizeof(float) * 2.0 * kv_width * layers *
                             (static_cast<double>(requests) * prompt_len + static_cast<double>(rows) * capacity);
  require_available_memory(cache_bytes, [&] {
    return str_cat("the key/value caches for ", requests, " request(s) x ", beams, " row(s) x ", capacity,
                   " tokens (max_new_tokens)");
  });
  GemmaState st;
  st.requests = requests;
  st.rows = rows;
  st.row_request.resize(rows);
  for (int64_t r = 0; r < rows; ++r) st.row_request[r] = r / beams;
  st.row_start.assign(rows, 0);
  st.row_limit.assign(rows, capacity);
  st.row_capacity = rows;
  st.request_capacity = requests;
  st.prompt_index.assign(requests, prompt_len);
  st.prompt_len = prompt_len;
  st.capacity = capacity;
  st.prompt_mask.assign(key_mask, key_mask + requests * prompt_len);
  st.prompt_kv.resize(layers);
  st.own_kv.resize(layers);
  for (auto& cache : st.own_kv) cache.get(rows * capacity * 2 * kv_width);
  // The whole prompt is the bidirectional prefix.
  const std::vector<int64_t> prefix(requests, prompt_len);
  std::vector<int64_t> positions(requests * prompt_len);
  st.next_position.resize(requests);
  for (int64_t b = 0; b < requests; ++b) {
    int64_t real = 0;
    for (int64_t i = 0; i < prompt_len; ++i) {
      const bool counted = key_mask[b * prompt_len + i] != 0;
      real += counted;
      positions[b * prompt_len + i] = counted ? real : 1;
    }
    st.next_position[b] = real + 1;
  }
  run_prompt(x, requests, prompt_len, key_mask, prefix.data(), positions.data(), &st.prompt_kv);
  std::vector<float> last(requests * d);
  for (int64_t b = 0; b < requests; ++b)
    std::memcpy(last.data() + b * d, x + ((b + 1) * prompt_len - 1) * d, d * sizeof(float));
  st.first_logits.resize(requests * config_.vocab_size);
  Buffer h;
  head(last.data(), requests, h.get(requests * d), st.first_logits.data());
  return st;
}

void GemmaDecoder::step(GemmaState& st, const float* embeddings, float* logits) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim;
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
  const int64_t q_width = heads * hd, kv_width = kv_heads * hd, qkv_width = q_width + 2 * kv_width;
  const int64_t rows = st.rows, t = st.generated;
  PALI_CHECK(t < st.capacity, "generation cache full: ", t, " tokens");
  // Each row's new token: its index after its own (padded) prompt, for the
  // sliding window over the prompt, and its rotary position (after the
  // request's real prompt tokens); both count only the row's own tokens.
  std::vector<int64_t> positions(rows), index(rows);
  int64_t last_index = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t own = t - st.row_start[r], request = st.row_request[r];
    positions[r] = st.next_position[request] + own;
    index[r] = st.prompt_index[request] + own;
    last_index = std::max(last_index, index[r]);
  }
  const bool joined = has_joined_rows(st.row_start, rows);
  if (joined) joined_rows_mask(st.row_start, rows, t + 1, st.slot_mask);
  float* x = st.x.get(rows * d);
  std::memcpy(x, embeddings, rows * d * sizeof(float));
  const Scratch s = scratch(st, rows);
  float* own_attn = st.own_attn.get(rows * q_width);
  float* lse = st.lse.get(rows * heads);
  float* own_lse = st.own_lse.get(rows * heads);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& l = layers_[li];
    rms_norm(x, rows, d, l.input_norm.data<float>(), config_.rms_norm_eps, s.h);
    linear(s.h, rows, l.qkv, s.qkv);
    rope_inplace(s.qkv, rows, qkv_width, heads + kv_heads, hd, positions.data(), inv_freq_.data());
    float* own = st.own_kv[li].data();
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(own + (r * st.capacity + t) * 2 * kv_width, s.qkv + r * qkv_width + q_width,
                  2 * kv_width * sizeof(float));
    AttentionParams p;
    p.batch = rows;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.q_len = 1;
    p.head_dim = hd;
    p.scale = attention_scale_;
    p.softcap = config_.attn_logit_softcapping;
    p.q = s.qkv;
    p.q_row_stride = qkv_width;
    p.causal = true;
    p.sliding_window = l.sliding ? config_.sliding_window : 0;
    // The request's prompt, shared by its rows...
    AttentionParams prompt = p;
    prompt.kv_len = st.prompt_len;
    prompt.k = st.prompt_kv[li].data();
    prompt.v = prompt.k + kv_width;
    prompt.k_row_stride = prompt.v_row_stride = 2 * kv_width;
    prompt.kv_batch_index = st.row_request.data();
    prompt.kv_batches = st.requests;
    prompt.key_mask = st.prompt_mask.data();
    prompt.mask_type = MaskType::i32;
    prompt.out = s.attn;
    prompt.lse = lse;
    // Causal masking hides no prompt key from any row; only a window that may
    // reach back into the prompt needs each row's own index.
    if (p.sliding_window <= 0 || last_index < p.sliding_window) {
      prompt.q_offset = last_index;
      attention(prompt);
    } else {
      for (int64_t begin = 0, end = 0; begin < rows; begin = end) {
        for (end = begin + 1; end < rows && index[end] == index[begin];) ++end;
        AttentionParams run = prompt;
        run.batch = end - begin;
        run.q = s.qkv + begin * qkv_width;
        run.out = s.attn + begin * q_width;
        run.lse = lse + begin * heads;
        run.kv_batch_index = st.row_request.data() + begin;
        run.q_offset = index[begin];
        attention(run);
      }
    }
    // ...then the row's own tokens, merged by their log-sum-exps.
    AttentionParams mine = p;
    mine.kv_len = t + 1;
    mine.k = own;
    mine.v = own + kv_width;
    mine.k_row_stride = mine.v_row_stride = 2 * kv_width;
    mine.k_batch_stride = mine.v_batch_stride = st.capacity * 2 * kv_width;
    mine.q_offset = t;
    mine.out = own_attn;
    mine.lse = own_lse;
    if (joined) {
      mine.key_mask = st.slot_mask.data();
      mine.mask_type = MaskType::u8;
    }
    attention(mine);
    merge_attention(s.attn, lse, own_attn, own_lse, rows, heads, hd);
    finish_layer(l, x, rows, s);
  }
  st.generated = t + 1;
  head(x, rows, s.h, logits);
}

void GemmaDecoder::reorder(GemmaState& st, const int64_t* source, int64_t rows) const {
  check_row_sources(source, rows, st.rows);
  const int64_t row_floats = 2 * config_.num_key_value_heads * config_.head_dim;
  reorder_cache_rows(st.own_kv, rows, st.capacity * row_floats, st.generated * row_floats, source,
                     st.reorder_scratch);
  gather_rows(st.row_request, source, rows);
  gather_rows(st.row_start, source, rows);
  gather_rows(st.row_limit, source, rows);
  st.rows = rows;
}

void GemmaDecoder::append(GemmaState& st, GemmaState& o) const {
  auto joinable = [](GemmaState& g) {
    return JoinableState{g.own_kv,    g.prompt_kv, g.prompt_mask, g.row_request, g.row_start,      g.row_limit,
                         g.rows,      g.requests,  g.capacity,    g.generated,   g.prompt_len,     g.row_capacity,
                         g.request_capacity, {&g.next_position, &g.prompt_index}};
  };
  join_states(joinable(st), joinable(o), 2 * config_.num_key_value_heads * config_.head_dim,
              "the key/value caches");
  st.first_logits.clear();
  o = GemmaState();
}

}  // namespace pali
