// Attention for a chunk of query rows of a batch of sequences stored back to
// back (rows b * seq + i), as one chunk of a parallel_rows pass computes it:
// the chunk may start and end inside a sequence and span several.
#pragma once

#include <cstdint>

#include "ops/attention.h"

namespace pali {

// `whole` describes all `batch` sequences (q_len = kv_len = seq, q_offset 0,
// out, masks and bias; its q/k/v are ignored), which read their queries, keys
// and values from the fused rows of `qkv` ([rows, 3 * heads * head_dim]: q | k | v);
// computes the output rows [row_begin, row_end).
void attention_rows(const AttentionParams& whole, const float* qkv, int64_t row_begin, int64_t row_end);

}  // namespace pali
