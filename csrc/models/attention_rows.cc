#include "models/attention_rows.h"

#include <algorithm>

#include "core/error.h"

namespace pali {

void attention_rows(const AttentionParams& whole, const float* qkv, int64_t row_begin, int64_t row_end) {
  const int64_t seq = whole.q_len;
  PALI_CHECK(whole.kv_len == seq && whole.q_offset == 0 && whole.kv_batch_divisor == 1,
             "attention_rows: expects self-attention over whole sequences");
  const int64_t hd = whole.heads * whole.head_dim, row = 3 * hd, batch_rows = seq * row;
  const int64_t out_row = whole.out_row_stride ? whole.out_row_stride : hd;
  const int64_t out_batch = whole.out_batch_stride ? whole.out_batch_stride : seq * out_row;
  const int64_t mask_batch = whole.mask_batch_stride ? whole.mask_batch_stride : seq;
  const size_t mask_bytes = whole.mask_type == MaskType::i32 ? 4 : 1;
  for (int64_t b = row_begin / seq; b * seq < row_end && b < whole.batch; ++b) {
    const int64_t first = std::max(row_begin, b * seq) - b * seq;
    const int64_t last = std::min(row_end, (b + 1) * seq) - b * seq;
    if (first >= last) continue;
    AttentionParams p = whole;
    p.batch = 1;
    p.q_len = last - first;
    p.q_offset = first;
    p.q = qkv + b * batch_rows + first * row;
    p.k = qkv + b * batch_rows + hd;
    p.v = qkv + b * batch_rows + 2 * hd;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = row;
    p.q_batch_stride = p.q_len * row;
    p.k_batch_stride = p.v_batch_stride = batch_rows;
    p.out = whole.out + b * out_batch + first * out_row;
    p.out_row_stride = out_row;
    p.out_batch_stride = p.q_len * out_row;
    if (whole.key_mask) p.key_mask = static_cast<const char*>(whole.key_mask) + b * mask_batch * mask_bytes;
    attention(p);
  }
}

}  // namespace pali
