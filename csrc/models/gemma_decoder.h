// The Gemma and Gemma 2 decoder stack, as a shared block: RMSNorm with
// (1 + weight), rotary positions, multi-query or grouped-query attention,
// a tanh-GELU gated FFN (GeGLU); Gemma 2 adds post-attention and
// pre/post-FFN norms, attention and final logit soft-capping, a sliding window
// on the layers `layer_types` says, and query_pre_attn_scalar for the scale.
//
// The attention mask is the prefix-LM mask (ops/attention.h): the first
// prefix_lengths[b] positions of sequence b attend to each other both ways,
// later positions attend causally (and within the window on sliding layers);
// padding keys are hidden.
//
//   embeddings float32[B, L, D] -> logits float32[B, L, V]
#pragma once

#include <string>
#include <vector>

#include "models/paligemma_config.h"
#include "models/weights.h"
#include "models/workspace.h"
#include "ops/linear.h"

namespace pali {

// One generation's state: the keys and values of each request's prompt (computed
// once, read by all its rows), each row's own keys and values, and the logits
// of the prompt's last position.
struct GemmaState {
  int64_t requests = 0;
  int64_t rows = 0;         // rows stepped: requests * beams, until finished ones are dropped
  int64_t prompt_len = 0;   // padded prompt length
  int64_t capacity = 0;     // generated tokens the rows' caches hold
  int64_t generated = 0;    // tokens appended so far
  // Rows and requests the caches have room for: a join copies only the new
  // rows and requests while they fit (appended caches keep some room).
  int64_t row_capacity = 0, request_capacity = 0;
  std::vector<Buffer> prompt_kv;    // per layer [requests, prompt_len, 2 * kv_width]: K | V
  std::vector<Buffer> own_kv;       // per layer [requests * beams, capacity, 2 * kv_width]
  std::vector<int64_t> row_request; // [rows]: the request (prompt K/V) of each row
  std::vector<int64_t> row_start, row_limit;  // [rows]: each row's first own slot and the slot it may reach
  std::vector<int32_t> prompt_mask; // [requests, prompt_len]
  std::vector<float> first_logits;  // [requests, V]
  std::vector<int64_t> next_position;  // [requests]: the rotary position of the first generated token
  std::vector<int64_t> prompt_index;   // [requests]: the first generated token's index after its own prompt
  std::vector<uint8_t> slot_mask;      // [rows, generated + 1] when rows joined late
  std::vector<float> reorder_scratch;
  Buffer x, h, qkv, attn, own_attn, lse, own_lse, wide, gated, sub;
};

class GemmaDecoder {
 public:
  // `prefix`: the weights' name prefix ("model.language_model."); `embedding`:
  // embed_tokens [V, D] (any float dtype), the head when tie_word_embeddings.
  GemmaDecoder(const GemmaConfig& config, WeightStore& weights, const std::string& prefix,
               const Tensor& embedding, bool tie_word_embeddings, WeightFormat format);

  // x: [batch, length, D] input embeddings, overwritten. key_mask: int32
  // [batch, length] (0: padding). prefix_lengths: [batch]. positions: the
  // rotary position of each token, [batch, length]. logits: [batch, length, V].
  void forward(float* x, int64_t batch, int64_t length, const int32_t* key_mask, const int64_t* prefix_lengths,
               const int64_t* positions, float* logits) const;

  // Runs the prompts x [requests, prompt_len, D] (the whole prompt is the
  // prefix; rotary positions as transformers' generate() gives them: the real
  // tokens 1, 2, ..., padding 1) and keeps their keys, values and last logits
  // for `beams` rows per request and up to `capacity` generated tokens.
  // Throws OutOfMemory when the caches would not fit in the memory left.
  GemmaState start(float* x, int64_t requests, int64_t prompt_len, const int32_t* key_mask, int64_t beams,
                   int64_t capacity) const;
  // Appends one token per row and writes the next-token logits [rows, V].
  void step(GemmaState& state, const float* embeddings, float* logits) const;
  // The output layer [V, D]: the embedding table too, when tied.
  const LinearWeight& lm_head() const { return lm_head_; }
  // The state continues with `rows` rows (at most as many as before), row r
  // from the own keys and values and the request of row source[r]: beam
  // search's reordering, and the dropping of finished rows.
  void reorder(GemmaState& state, const int64_t* source, int64_t rows) const;
  // Adds the rows and requests of `other` (of this decoder, past its first
  // step) after those of `state` (models/joined_rows.h); other is left empty.
  // Throws OutOfMemory when the joined caches would not fit in the memory left.
  void append(GemmaState& state, GemmaState& other) const;
  int64_t vocab_size() const { return config_.vocab_size; }

 private:
  struct Layer {
    Tensor input_norm, post_attention_norm, pre_ffn_norm, post_ffn_norm;  // (1 + weight)
    LinearWeight qkv, o, gate_up, down;
    bool sliding = false;
  };
  struct Scratch {
    float *h, *qkv, *attn, *wide, *gated, *sub;
  };
  // The layers over the prompts x [batch * length, D]; the keys and values of
  // layer i go to kv_out[i] ([batch * length, 2 * kv_width]) when given.
  void run_prompt(float* x, int64_t batch, int64_t length, const int32_t* key_mask, const int64_t* prefix_lengths,
                  const int64_t* positions, std::vector<Buffer>* kv_out) const;
  Scratch scratch(GemmaState& buffers, int64_t rows) const;
  // The output projection, FFN and residuals after attention, for `rows` rows.
  void finish_layer(const Layer& l, float* x, int64_t rows, const Scratch& s) const;
  // Final norm, head and soft-cap for `rows` rows of x.
  void head(const float* x, int64_t rows, float* h, float* logits) const;

  const GemmaConfig& config_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  LinearWeight lm_head_;
  std::vector<float> inv_freq_;
  float attention_scale_ = 1.0f;
};

}  // namespace pali
