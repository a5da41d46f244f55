// Multi-head scaled dot-product attention, flash-style: online softmax over
// blocks of keys, never materialising the [q_len, kv_len] score matrix.
//
// Layout: Q, K, V and out are float32, row-major with the heads interleaved in a
// row ([rows, heads * head_dim]; head h is columns [h*head_dim, (h+1)*head_dim)),
// with explicit row and batch strides in floats, so that slices of a fused QKV
// projection output (row stride 3*heads*head_dim) or of a preallocated KV cache
// (batch stride = capacity * row stride) are passed without copies.
//   Q row i of batch b:   q + b*q_batch_stride + i*q_row_stride
//   K/V row j:            k + kvb(b)*k_batch_stride + j*k_row_stride
//   out row i of batch b: out + b*out_batch_stride + i*out_row_stride
// where kvb(b), the K/V batch that query batch b reads, is kv_batch_index[b]
// when given, else b / kv_batch_divisor.
//
// score(b,h,i,j) = scale * <q_bhi, k_bgj> + bias(h,i,j), g = h / (heads / kv_heads)
// (grouped-query attention: kv_heads K/V heads, each shared by heads / kv_heads
// query heads; K/V rows hold kv_heads * head_dim floats), then soft-capped to
// softcap * tanh(score / softcap) when softcap > 0, and masked to -inf where
//   * key_mask is given and key_mask[kvb(b)*mask_batch_stride + j] == 0,
//   * causal and j > q_offset + i, unless prefix_lengths is given and both the
//     query (q_offset + i) and the key j lie in the K/V batch's prefix
//     [0, prefix_lengths[kvb(b)]) (the prefix-LM mask: the prefix
//     attends to itself bidirectionally, what follows it causally),
//   * sliding_window > 0 and q_offset + i - j >= sliding_window, for the keys a
//     query sees causally (the prefix of a prefix query stays whole),
// out_bhi = sum_j softmax_j(score) v_bhj. A row with every key masked gets zeros
// (never NaN).
//
// Relative position bias (T5), given per relative distance rather than as [L, L]:
//   bias(h, i, j) = rel_bias[h * rel_bias_stride + (j - (q_offset + i)) + rel_offset]
// i.e. rel_offset is the table column of distance 0 and column c holds distance
// c - rel_offset. The table must cover every distance used: the call checks
// rel_offset - (q_offset + q_len - 1) >= 0 and (kv_len - 1 - q_offset) + rel_offset
// < rel_bias_stride, and throws InvalidArgument otherwise (see
// relative_bias_table() in ops/position_bucket.h, which builds such a table).
//
// Threads: over (K/V batch, head, block of 16 query rows), where the query rows
// of a K/V batch are those of all the query batches reading it (in the order of
// b); rows are processed four (then two, then one) at a time, positions or
// beams alike, so that each K/V load feeds several rows. Decode (q_len = 1) is
// thus parallel over requests * heads. Each thread takes a contiguous run of
// work items holding about the same number of query rows, also when the K/V
// batches have different numbers of query batches (kv_batch_index).
#pragma once

#include <cstdint>

namespace pali {

enum class MaskType : uint8_t { none, i32, u8 };

struct AttentionParams {
  int64_t batch = 1;     // query batch
  int64_t heads = 1;
  int64_t q_len = 1;
  int64_t kv_len = 1;
  int64_t head_dim = 64;
  int64_t kv_heads = 0;  // 0: heads (multi-head); 1: multi-query; else grouped-query
  float scale = 1.0f;    // 1.0 for T5, 1/sqrt(head_dim) for ViT
  float softcap = 0.0f;  // > 0: scores soft-capped (Gemma 2)

  const float* q = nullptr;
  int64_t q_row_stride = 0;    // 0: heads * head_dim
  int64_t q_batch_stride = 0;  // 0: q_len * q_row_stride
  const float* k = nullptr;
  int64_t k_row_stride = 0;    // 0: heads * head_dim
  int64_t k_batch_stride = 0;  // 0: kv_len * k_row_stride
  const float* v = nullptr;
  int64_t v_row_stride = 0;
  int64_t v_batch_stride = 0;
  float* out = nullptr;
  int64_t out_row_stride = 0;
  int64_t out_batch_stride = 0;

  // Key padding mask, 1 = attend, 0 = masked; indexed by the K/V batch.
  const void* key_mask = nullptr;
  MaskType mask_type = MaskType::none;
  int64_t mask_batch_stride = 0;  // 0: kv_len

  bool causal = false;
  int64_t q_offset = 0;  // absolute position of query row 0 (for causal and bias)
  // With causal: per K/V batch, the length of the bidirectional prefix.
  const int64_t* prefix_lengths = nullptr;
  int64_t sliding_window = 0;  // with causal: > 0 limits how far back a query sees

  const float* rel_bias = nullptr;  // [heads, rel_bias_stride]
  int64_t rel_bias_stride = 0;      // number of distances in the table (num_rel)
  int64_t rel_offset = 0;           // column of distance 0

  // Optional: the log-sum-exp of each row's scores, lse[(b * q_len + i) * heads + h]
  // (-inf where every key is masked), so that attention over keys split in two
  // calls (a request's shared prefix, each beam's own tokens) can be merged:
  // see merge_attention().
  float* lse = nullptr;

  // Query batch b reads K/V (and key_mask, prefix_lengths) batch b / kv_batch_divisor
  // (beams sharing one request's cross-attention K/V). Must divide batch.
  int64_t kv_batch_divisor = 1;
  // Or, when given, K/V batch kv_batch_index[b] ([batch], each in [0, kv_batches);
  // kv_batch_divisor must then be 1): the rows of a search whose finished rows
  // were dropped, so that a request's rows are no longer a fixed-size run.
  const int64_t* kv_batch_index = nullptr;
  int64_t kv_batches = 0;
};

// Throws InvalidArgument on inconsistent parameters (null pointers, strides
// smaller than the row widths, a bias table that does not cover the distances...).
void attention(const AttentionParams& p);

// Softmax attention over the union of two key sets, from each set's output and
// log-sum-exp: out_a = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b),
// per row and head. out_*: [rows, heads * head_dim] dense; lse_*: [rows, heads].
void merge_attention(float* out_a, const float* lse_a, const float* out_b, const float* lse_b, int64_t rows,
                     int64_t heads, int64_t head_dim);

}  // namespace pali
