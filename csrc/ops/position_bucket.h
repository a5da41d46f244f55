// T5 relative position buckets and the per-distance bias table for attention().
#pragma once

#include <cstdint>

namespace pali {

// Exactly HF transformers' T5Attention._relative_position_bucket for one
// relative position (memory_position - query_position), including its float32
// log computation, so the buckets match bit for bit:
//   bidirectional: num_buckets /= 2, +num_buckets when relative_position > 0, n = |rp|;
//   otherwise n = max(-rp, 0);
//   max_exact = num_buckets / 2; small n -> n; else
//   min(max_exact + int(log(float(n) / max_exact) / log(max_distance / max_exact)
//                       * (num_buckets - max_exact)), num_buckets - 1).
int32_t relative_position_bucket(int64_t relative_position, bool bidirectional,
                                 int64_t num_buckets, int64_t max_distance);

// table[h, c] = embedding[bucket(c - rel_offset), h] for c in [0, num_rel):
// the table attention() takes (rel_bias, rel_bias_stride = num_rel, rel_offset).
// embedding: the bucket embedding [num_buckets, heads] (nn.Embedding weight,
// float32); table: [heads, num_rel].
// For self-attention over q_len queries at q_offset and kv_len keys, the
// distances are j - (q_offset + i) in [-(q_offset + q_len - 1), kv_len - 1 - q_offset]:
// rel_offset = q_offset + q_len - 1 and num_rel = rel_offset + kv_len - q_offset
// (decode step t: q_len = 1, q_offset = t, kv_len = t + 1 -> rel_offset = t, num_rel = t + 1).
void relative_bias_table(const float* embedding, int64_t num_buckets, int64_t heads,
                         bool bidirectional, int64_t max_distance, int64_t rel_offset,
                         int64_t num_rel, float* table);

}  // namespace pali
