// The T5 v1.1 / mT5 decoder with a self-attention KV cache.
//
// A DecoderState holds everything one generation needs and is allocated once:
// the self-attention cache of every layer for `capacity` positions, the
// cross-attention K/V computed once from the encoder output (one copy per
// request, shared by all its rows: each row reads its request's through
// attention's kv_batch_index), and the unidirectional relative position bias
// table for all positions (each step reads its one row of distances from it).
//
//   step(tokens int64[rows, q_len]) -> logits float32[rows, V] of the last position
//   (or [rows, q_len, V] for teacher forcing); rows = requests * beams at the
//   start, fewer once reorder() has dropped finished rows, more once append()
//   has joined another state's rows (models/joined_rows.h)
#pragma once

#include <vector>

#include "models/t5_layers.h"
#include "models/weights.h"

namespace pali {

struct DecoderState {
  int64_t requests = 0;
  int64_t rows = 0;      // rows stepped: requests * beams, until finished ones are dropped
  int64_t capacity = 0;  // positions the cache holds
  int64_t length = 0;    // positions filled
  int64_t enc_len = 0;
  // Rows and requests the caches have room for: a join copies only the new
  // rows and requests while they fit (appended caches keep some room).
  int64_t row_capacity = 0, request_capacity = 0;
  std::vector<int64_t> row_request;              // [rows]: the request (cross-attention K/V) of each row
  std::vector<int64_t> row_start, row_limit;     // [rows]: each row's first slot and the slot it may reach
  std::vector<int32_t> enc_mask;                 // [requests, enc_len]
  std::vector<Buffer> self_kv;                   // per layer [requests * beams, capacity, 2 * inner]: K then V
  std::vector<Buffer> cross_kv;                  // per layer [requests, enc_len, 2 * inner]
  std::vector<float> bias_table;                 // [heads, 2 * capacity - 1]: distance c - (capacity - 1)
  std::vector<float> reorder_scratch;
  std::vector<uint8_t> slot_mask;                // [rows, kv_len] when rows joined late
  Buffer x, h, qkv, attn, q, wide, gated;
};

class T5Decoder {
 public:
  T5Decoder(const T5Spec& config, WeightStore& weights, const Tensor& embedding, WeightFormat format);

  // memory: [requests, enc_len, d_model]; mask: [requests, enc_len].
  DecoderState start(const float* memory, const int32_t* mask, int64_t requests, int64_t enc_len,
                     int64_t beams, int64_t capacity) const;
  // Appends q_len positions of tokens [rows, q_len] to the cache and writes the
  // logits of the last position [rows, V], or of all positions [rows, q_len, V].
  void step(DecoderState& state, const int64_t* tokens, int64_t q_len, float* logits,
            bool all_positions) const;
  // The state continues with `rows` rows (at most as many as before), row r
  // from the cache and request of row source[r]: beam reordering, and the
  // dropping of finished rows.
  void reorder(DecoderState& state, const int64_t* source, int64_t rows) const;
  // Adds the rows and requests of `other` (of this decoder, past its first
  // step) after those of `state`; other is left empty. Throws OutOfMemory
  // when the joined caches would not fit in the memory left.
  void append(DecoderState& state, DecoderState& other) const;

 private:
  struct Layer {
    Tensor self_attn_norm, cross_attn_norm, ffn_norm;
    LinearWeight self_qkv, self_o, cross_q, cross_kv, cross_o;
    T5FeedForward ffn;
  };
  // The relative position bias of every distance the state's capacity allows.
  void build_bias_table(DecoderState& state) const;

  T5Spec config_;
  const Tensor& embedding_;  // [V, d_model] float32, shared with the encoder input
  Tensor relative_attention_bias_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  LinearWeight lm_head_;
  float lm_head_scale_ = 1.0f;
};

}  // namespace pali
