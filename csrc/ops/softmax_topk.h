// Row-wise log_softmax and top-k, for beam search and sampling.
#pragma once

#include <cstdint>

namespace pali {

// y[m, v] = x - max - log(sum exp(x - max)) per row (y may equal x).
// A row whose entries are all -inf gives -inf everywhere (never NaN); NaN inputs propagate.
void log_softmax(const float* x, int64_t m, int64_t v, float* y);

// Per row of x[m, v]: the k largest values, sorted descending, ties broken by
// the lower index; values[m, k], indices[m, k] (column indices in [0, v); 64-bit,
// since beam search ranks beams x vocabulary candidates in one row).
// NaN is treated as larger than any number (as torch.topk does). Requires 1 <= k <= v.
void topk(const float* x, int64_t m, int64_t v, int64_t k, float* values, int64_t* indices);

}  // namespace pali
