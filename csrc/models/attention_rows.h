// Attention for a chunk of query rows of a batch of sequences stored back to
// back (rows b * seq + i), as one thread of a parallel_rows pass computes it:
// the chunk may start and end inside a sequence and span several.
#pragma once

#include <cstdint>

#include "ops/attention.h"

namespace pali {

// `whole` describes all `batch` sequences (q_len = kv_len = seq, batch strides
// seq rows, q_offset 0); computes the output rows [row_begin, row_end) of it.
void attention_rows(const AttentionParams& whole, int64_t row_begin, int64_t row_end);

}  // namespace pali
